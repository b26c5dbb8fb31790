#include "common/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "common/str_cat.h"
#include "absl/strings/str_format.h"

namespace pinmoe {

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Create(const std::string& name_prefix,
                                                                   uint64_t size_bytes) {
  if (size_bytes == 0) return absl::InvalidArgumentError("shared buffer of 0 bytes");
  uint64_t size = (size_bytes + kSharedBufferAlignment - 1) / kSharedBufferAlignment *
                  kSharedBufferAlignment;
  std::random_device rd;
  std::string name;
  int fd = -1;
  for (int attempt = 0; attempt < 8 && fd < 0; ++attempt) {
    name = absl::StrFormat("/%s-%d-%08x%08x", name_prefix, ::getpid(), rd(), rd());
    fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    return absl::InternalError(StrCat("shm_open(", name, "): ", std::strerror(errno)));
  }
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    ::close(fd);
    ::shm_unlink(name.c_str());
    return absl::ResourceExhaustedError(
        StrCat("shared buffer ", name, " of ", size, " bytes: ", std::strerror(err)));
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    ::shm_unlink(name.c_str());
    return absl::ResourceExhaustedError(
        StrCat("mmap of shared buffer ", name, ": ", std::strerror(err)));
  }
  auto shm = std::unique_ptr<SharedMemory>(new SharedMemory());
  shm->name_ = name;
  shm->size_ = size;
  shm->data_ = static_cast<uint8_t*>(p);
  shm->owner_ = true;
  return shm;
}

absl::StatusOr<std::unique_ptr<SharedMemory>> SharedMemory::Open(const std::string& name,
                                                                 uint64_t size_bytes) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos) {
    return absl::InvalidArgumentError(StrCat("'", name, "' is not a shared-memory name"));
  }
  int fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    return absl::NotFoundError(StrCat("shared buffer ", name, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != size_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(StrCat("shared buffer ", name, " is ", st.st_size,
                                                   " bytes, expected ", size_bytes));
  }
  void* p = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    return absl::InternalError(StrCat("mmap of shared buffer ", name, ": ", std::strerror(err)));
  }
  auto shm = std::unique_ptr<SharedMemory>(new SharedMemory());
  shm->name_ = name;
  shm->size_ = size_bytes;
  shm->data_ = static_cast<uint8_t*>(p);
  return shm;
}

SharedMemory::~SharedMemory() {
  if (data_ != nullptr) ::munmap(data_, size_);
  if (owner_) ::shm_unlink(name_.c_str());
}

absl::StatusOr<std::span<uint8_t>> SharedMemory::Slice(uint64_t offset, uint64_t length) {
  if (offset > size_ || length > size_ - offset) {
    return absl::OutOfRangeError(StrCat("slice [", offset, ", +", length,
                                              ") is outside shared buffer ", name_, " of ", size_,
                                              " bytes"));
  }
  return std::span<uint8_t>(data_ + offset, length);
}

}  // namespace pinmoe
