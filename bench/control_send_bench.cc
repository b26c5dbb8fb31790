// What the control plane costs the host per decode step: the coordinator's ROUTER sends each worker a
// Step shaped like a decode step's (24 layers with their ticks and combine flags, the slices), and
// each worker process answers Done, as pinmoe's do. Prints the Send calls alone, building and
// serialising the messages, and the round trip until every Done is in (medians, p10, p90 over the
// rounds; a pause between rounds, as between decode steps).
//
//   build/bin/control_send_bench [--workers N] [--rounds R] [--gap-us G] [--hot-poll 0|1]
//
// --hot-poll 1 (the default) has the workers poll their socket without blocking, as a worker does
// for a while after each Step (PINMOE_WORKER_HOT_POLL_MS); 0 has them block in a poll.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/str_cat.h"
#include "common/transport.h"

namespace {

using Clock = std::chrono::steady_clock;

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// A worker: connects, says hello, answers every Step with a Done until told to stop.
[[noreturn]] void Worker(const std::string& endpoint, int index, bool hot_poll, pid_t parent) {
  auto dealer = pinmoe::DealerSocket::Connect(endpoint, pinmoe::StrCat("worker-", index));
  if (!dealer.ok()) _exit(3);
  pinmoe::proto::Envelope hello = pinmoe::MakeEnvelope();
  hello.mutable_heartbeat();
  if (!(*dealer)->Send(hello).ok()) _exit(4);
  for (unsigned polls = 0;; ++polls) {
    if (polls % 4096 == 0 && getppid() != parent) _exit(0);  // the bench is gone
    auto in = (*dealer)->Receive(hot_poll ? 0 : 200);
    if (!in.ok()) _exit(5);
    if (!in->has_value()) continue;
    if ((*in)->envelope.has_shutdown()) _exit(0);
    pinmoe::proto::Envelope done = pinmoe::MakeEnvelope();
    done.mutable_done()->set_sequence((*in)->envelope.step().sequence());
    if (!(*dealer)->Send(done).ok()) _exit(6);
  }
}

struct Stats {
  std::vector<double> v;
  void Print(const char* what) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    std::printf("%-44s median %7.1f us  p10 %7.1f  p90 %7.1f\n", what, v[n / 2], v[n / 10], v[n * 9 / 10]);
  }
};

}  // namespace

int main(int argc, char** argv) {
  int workers = 2, rounds = 2000, gap_us = 500, hot_poll = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--workers") workers = v;
    else if (a == "--rounds") rounds = v;
    else if (a == "--gap-us") gap_us = v;
    else if (a == "--hot-poll") hot_poll = v;
    else {
      std::fprintf(stderr, "usage: control_send_bench [--workers N] [--rounds R] [--gap-us G] [--hot-poll 0|1]\n");
      return 2;
    }
  }
  if (workers < 1 || rounds < 10) return 2;
  const std::string endpoint = pinmoe::StrCat("ipc:///tmp/pinmoe-control-bench-", getpid());
  std::vector<pid_t> children;
  const pid_t self = getpid();
  for (int w = 0; w < workers; ++w) {
    const pid_t pid = fork();
    if (pid == 0) Worker(endpoint, w, hot_poll != 0, self);
    children.push_back(pid);
  }
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "control_send_bench: %s\n", what);
    for (pid_t pid : children) kill(pid, SIGKILL);
    return 1;
  };
  auto router = pinmoe::RouterSocket::Bind(endpoint);
  if (!router.ok()) return fail(std::string(router.status().message()).c_str());
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (int hellos = 0; hellos < workers;) {
    auto in = (*router)->Receive(100);
    if (in.ok() && in->has_value()) ++hellos;
    if (Clock::now() > deadline) return fail("the workers did not connect within 10 s");
  }
  Stats build, send, round_trip;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = Clock::now();
    std::vector<pinmoe::proto::Envelope> steps;
    for (int w = 0; w < workers; ++w) {
      pinmoe::proto::Envelope env = pinmoe::MakeEnvelope();
      pinmoe::proto::Step* s = env.mutable_step();
      s->set_sequence(r);
      s->set_tokens(1);
      s->set_top_k(8);
      for (int l = 0; l < 24; ++l) {
        s->add_layers(l * workers + w);
        s->add_ticks(1 + l * workers + w);
        s->add_combine(true);
      }
      for (pinmoe::proto::Slice* sl : {s->mutable_input(), s->mutable_routing(), s->mutable_output(),
                                       s->mutable_ready(), s->mutable_done(), s->mutable_residual(),
                                       s->mutable_weights()}) {
        sl->set_buffer_id(1);
        sl->set_offset(4096);
        sl->set_length(8192);
      }
      (void)env.SerializeAsString();  // what Send does again: counted in "building"
      steps.push_back(std::move(env));
    }
    const auto t1 = Clock::now();
    for (int w = 0; w < workers; ++w) {
      if (!(*router)->Send(pinmoe::StrCat("worker-", w), steps[w]).ok()) return fail("a Send failed");
    }
    const auto t2 = Clock::now();
    for (int got = 0; got < workers;) {
      auto in = (*router)->Receive(0);
      if (!in.ok()) return fail("a Receive failed");
      if (in->has_value()) ++got;
    }
    const auto t3 = Clock::now();
    build.v.push_back(Us(t1 - t0));
    send.v.push_back(Us(t2 - t1));
    round_trip.v.push_back(Us(t3 - t1));
    std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
  }
  std::printf("%d worker process(es), %d rounds, %d us between rounds, workers %s\n", workers, rounds, gap_us,
              hot_poll != 0 ? "polling without blocking" : "blocking in a poll");
  build.Print("building and serialising the Steps");
  send.Print("the Send calls");
  round_trip.Print("first Send -> every Done in");
  pinmoe::proto::Envelope bye = pinmoe::MakeEnvelope();
  bye.mutable_shutdown()->set_reason("bench done");
  for (int w = 0; w < workers; ++w) (void)(*router)->Send(pinmoe::StrCat("worker-", w), bye);
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
  }
  return 0;
}
