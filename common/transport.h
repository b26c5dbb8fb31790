// The control plane's sockets: the coordinator binds one ROUTER, each worker connects one DEALER whose
// identity is its worker id. Each socket belongs to exactly one thread. Every wait is bounded; ZeroMQ's
// exceptions are caught here and become Status values naming the endpoint or peer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "proto/pinmoe.pb.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace pinmoe {

// Largest control message accepted; anything bigger is refused by ZeroMQ before we parse it.
inline constexpr int64_t kMaxControlMessageBytes = 16 << 20;

struct Incoming {
  std::string peer;  // ROUTER side: the sender's identity; DEALER side: empty
  proto::Envelope envelope;
};

class RouterSocket {
 public:
  static absl::StatusOr<std::unique_ptr<RouterSocket>> Bind(const std::string& endpoint);
  ~RouterSocket();

  absl::Status Send(const std::string& peer, const proto::Envelope& envelope);
  // Waits at most timeout_ms; nullopt when nothing came.
  absl::StatusOr<std::optional<Incoming>> Receive(int timeout_ms);
  const std::string& endpoint() const { return endpoint_; }

 private:
  RouterSocket() = default;
  std::unique_ptr<zmq::context_t> context_;
  std::unique_ptr<zmq::socket_t> socket_;
  std::string endpoint_;
};

class DealerSocket {
 public:
  static absl::StatusOr<std::unique_ptr<DealerSocket>> Connect(const std::string& endpoint,
                                                               const std::string& identity);
  ~DealerSocket();

  absl::Status Send(const proto::Envelope& envelope);
  absl::StatusOr<std::optional<Incoming>> Receive(int timeout_ms);

 private:
  DealerSocket() = default;
  std::unique_ptr<zmq::context_t> context_;
  std::unique_ptr<zmq::socket_t> socket_;
  std::string endpoint_;
};

// Wraps a body into an envelope of the current protocol version.
proto::Envelope MakeEnvelope();

}  // namespace pinmoe
