# Sourced by the scripts that run on the GPU machine: MPS, which worker processes on the coordinator's GPU
# need (README), started for a script's runs only.
#   mps_start   exports the pipe and log directories and starts the control daemon; where it did not start,
#               unsets them again and fails
#   mps_stop    stops the daemon (and with it the server) and unsets the directories
mps_start() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/pinmoe-mps CUDA_MPS_LOG_DIRECTORY=/tmp/pinmoe-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && return 0
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  return 1
}
mps_stop() {
  echo quit | nvidia-cuda-mps-control
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}
