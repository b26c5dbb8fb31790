#include "common/transport.h"

#include <zmq.hpp>

#include "common/str_cat.h"
#include "common/status.h"

namespace pinmoe {
namespace {

absl::Status ZmqError(std::string_view what, const std::string& where, const zmq::error_t& e) {
  return absl::UnavailableError(StrCat(what, " ", where, ": ", e.what()));
}

absl::StatusOr<proto::Envelope> ParseEnvelope(const zmq::message_t& msg, std::string_view from) {
  proto::Envelope env;
  if (!env.ParseFromArray(msg.data(), static_cast<int>(msg.size()))) {
    return absl::DataLossError(StrCat("malformed control message from ", from));
  }
  if (env.version() != proto::PROTOCOL_VERSION_CURRENT) {
    return absl::FailedPreconditionError(
        StrCat(from, " speaks protocol version ", static_cast<int>(env.version()),
                     "; this build speaks ", static_cast<int>(proto::PROTOCOL_VERSION_CURRENT)));
  }
  return env;
}

zmq::message_t Serialize(const proto::Envelope& envelope) {
  std::string bytes = envelope.SerializeAsString();
  return zmq::message_t(bytes.data(), bytes.size());
}

}  // namespace

proto::Envelope MakeEnvelope() {
  proto::Envelope env;
  env.set_version(proto::PROTOCOL_VERSION_CURRENT);
  return env;
}

absl::StatusOr<std::unique_ptr<RouterSocket>> RouterSocket::Bind(const std::string& endpoint) {
  auto s = std::unique_ptr<RouterSocket>(new RouterSocket());
  s->endpoint_ = endpoint;
  try {
    s->context_ = std::make_unique<zmq::context_t>(1);
    s->socket_ = std::make_unique<zmq::socket_t>(*s->context_, zmq::socket_type::router);
    s->socket_->set(zmq::sockopt::linger, 0);
    s->socket_->set(zmq::sockopt::router_mandatory, 1);
    s->socket_->set(zmq::sockopt::router_handover, 1);  // a restarted worker takes its identity back
    s->socket_->set(zmq::sockopt::maxmsgsize, kMaxControlMessageBytes);
    s->socket_->bind(endpoint);
  } catch (const zmq::error_t& e) {
    return ZmqError("cannot bind", endpoint, e);
  }
  return s;
}

RouterSocket::~RouterSocket() {
  socket_.reset();
  context_.reset();
}

absl::Status RouterSocket::Send(const std::string& peer, const proto::Envelope& envelope) {
  try {
    zmq::message_t id(peer.data(), peer.size());
    if (!socket_->send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait) ||
        !socket_->send(Serialize(envelope), zmq::send_flags::dontwait)) {
      return absl::UnavailableError(StrCat("send to ", peer, " would block"));
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) {
      return absl::UnavailableError(StrCat(peer, " is not connected"));
    }
    return ZmqError("send to", peer, e);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Incoming>> RouterSocket::Receive(int timeout_ms) {
  try {
    zmq::pollitem_t item{static_cast<void*>(*socket_), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return std::nullopt;
    zmq::message_t id, body;
    if (!socket_->recv(id, zmq::recv_flags::dontwait)) return std::nullopt;
    std::string peer(static_cast<const char*>(id.data()), id.size());
    if (!id.more() || !socket_->recv(body, zmq::recv_flags::dontwait)) {
      return absl::DataLossError(StrCat("truncated message from ", peer));
    }
    if (body.more()) {  // drain the extra frames rather than misparse them
      zmq::message_t extra;
      while (socket_->recv(extra, zmq::recv_flags::dontwait) && extra.more()) {
      }
      return absl::DataLossError(StrCat("multi-frame message from ", peer));
    }
    ASSIGN_OR_RETURN(proto::Envelope env, ParseEnvelope(body, peer));
    return Incoming{peer, std::move(env)};
  } catch (const zmq::error_t& e) {
    return ZmqError("receive on", endpoint_, e);
  }
}

absl::StatusOr<std::unique_ptr<DealerSocket>> DealerSocket::Connect(const std::string& endpoint,
                                                                    const std::string& identity) {
  auto s = std::unique_ptr<DealerSocket>(new DealerSocket());
  s->endpoint_ = endpoint;
  try {
    s->context_ = std::make_unique<zmq::context_t>(1);
    s->socket_ = std::make_unique<zmq::socket_t>(*s->context_, zmq::socket_type::dealer);
    s->socket_->set(zmq::sockopt::linger, 0);
    s->socket_->set(zmq::sockopt::routing_id, identity);
    s->socket_->set(zmq::sockopt::maxmsgsize, kMaxControlMessageBytes);
    s->socket_->connect(endpoint);
  } catch (const zmq::error_t& e) {
    return ZmqError("cannot connect to", endpoint, e);
  }
  return s;
}

DealerSocket::~DealerSocket() {
  socket_.reset();
  context_.reset();
}

absl::Status DealerSocket::Send(const proto::Envelope& envelope) {
  try {
    if (!socket_->send(Serialize(envelope), zmq::send_flags::dontwait)) {
      return absl::UnavailableError(StrCat("send to coordinator at ", endpoint_,
                                                 " would block"));
    }
  } catch (const zmq::error_t& e) {
    return ZmqError("send to", endpoint_, e);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Incoming>> DealerSocket::Receive(int timeout_ms) {
  try {
    zmq::pollitem_t item{static_cast<void*>(*socket_), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return std::nullopt;
    zmq::message_t body;
    if (!socket_->recv(body, zmq::recv_flags::dontwait)) return std::nullopt;
    ASSIGN_OR_RETURN(proto::Envelope env, ParseEnvelope(body, StrCat("coordinator at ", endpoint_)));
    return Incoming{"", std::move(env)};
  } catch (const zmq::error_t& e) {
    return ZmqError("receive on", endpoint_, e);
  }
}

}  // namespace pinmoe
