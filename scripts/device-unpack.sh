# Sourced by the scripts that run on the GPU machine: when the call carried build-device/dist.tar.gz
# (scripts/build-device makes it; the unpacked build-device/dist is too large to carry together with the
# tree), unpack it over any build-device/dist left from an earlier call, and remove the archive so that a
# later call carrying build-device/dist itself is not overridden by it.
if [ -f build-device/dist.tar.gz ]; then
  rm -rf build-device/dist
  tar -C build-device -xzf build-device/dist.tar.gz && rm -f build-device/dist.tar.gz
fi
