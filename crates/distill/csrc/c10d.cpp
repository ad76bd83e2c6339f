// A process group over libtorch's own distributed runtime (c10d), which tch does not bind: a
// TCPStore rendezvous (rank 0 serves it), then the gloo backend for CPU tensors or, in a build
// against CUDA with NCCL's headers, the NCCL backend for CUDA tensors. All-reduce (sum) and
// broadcast, in place, each waited for, and the rendezvous store's keys for small messages. Every
// C++ exception becomes a message (malloc'd, freed with distill_free_message) instead of crossing
// into Rust.
//
// The gloo backend is compiled in when gloo's headers were found (DISTILL_GLOO); the code itself
// is libtorch's, exported by libtorch_cpu.so. Debian's libgloo-dev provides the headers.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef DISTILL_GLOO
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef DISTILL_NCCL
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "message.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

bool is_loopback(const std::string &host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

extern "C" {

// Which backends this build has: bit 0 gloo, bit 1 NCCL.
int distill_c10d_backends() {
  int b = 0;
#ifdef DISTILL_GLOO
  b |= 1;
#endif
#ifdef DISTILL_NCCL
  b |= 2;
#endif
  return b;
}

// Rendezvous at host:port (rank 0 serves the store when `serve`; under torchrun its agent does)
// under the key prefix `prefix`, and start the backend: NCCL when `cuda`, else gloo with `threads`
// threads. *out receives the group.
char *distill_c10d_new(const char *host, int port, int rank, int world, int serve, const char *prefix,
                       int64_t timeout_ms, int threads, int cuda, void **out) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = serve != 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(
        std::string(prefix), c10::make_intrusive<c10d::TCPStore>(std::string(host), so));
    auto *g = new Group{store, {}, timeout};
    try {
      if (cuda != 0) {
#ifdef DISTILL_NCCL
        auto o = c10d::ProcessGroupNCCL::Options::create();
        o->timeout = timeout;
        g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, o);
#else
        throw std::runtime_error(
            "this build of distill has no NCCL backend (it was compiled without CUDA and NCCL's headers)");
#endif
      } else {
#ifdef DISTILL_GLOO
        auto o = c10d::ProcessGroupGloo::Options::create(timeout);
        // On one machine, loopback; otherwise the interface GLOO_SOCKET_IFNAME names, or the
        // address this host's name resolves to (torch's own default).
        if (is_loopback(host)) {
          o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        } else {
          o->devices = c10d::ProcessGroupGloo::Options::create_default(timeout)->devices;
        }
        o->threads = threads > 0 ? threads : 1;
        g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
#else
        throw std::runtime_error(
            "this build of distill has no gloo backend (gloo's headers were not found when it was compiled; install "
            "Debian's libgloo-dev and rebuild)");
#endif
      }
    } catch (...) {
      delete g;
      throw;
    }
    *out = g;
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

void distill_c10d_free(void *g) { delete static_cast<Group *>(g); }

// Sum of each tensor over the ranks, in place (one collective per tensor, all waited for).
char *distill_c10d_allreduce_sum(void *gp, at::Tensor *const *ts, size_t n) {
  try {
    auto *g = static_cast<Group *>(gp);
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      o.timeout = g->timeout;
      g->backend->allreduce(one, o)->wait(g->timeout);
    }
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

// Rank `root`'s values of each tensor copied into every rank's, in place.
char *distill_c10d_broadcast(void *gp, at::Tensor *const *ts, size_t n, int root) {
  try {
    auto *g = static_cast<Group *>(gp);
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = g->timeout;
      g->backend->broadcast(one, o)->wait(g->timeout);
    }
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

// A key of the rendezvous store (rank 0's): set, and read (waiting up to the group's timeout).
char *distill_c10d_store_set(void *gp, const char *key, const uint8_t *value, size_t len) {
  try {
    auto *g = static_cast<Group *>(gp);
    g->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

char *distill_c10d_store_get(void *gp, const char *key, uint8_t **value, size_t *len) {
  try {
    auto *g = static_cast<Group *>(gp);
    auto v = g->store->get(std::string(key));
    *len = v.size();
    *value = static_cast<uint8_t *>(std::malloc(v.size() + 1));
    if (*value == nullptr) throw std::bad_alloc();
    if (!v.empty()) std::memcpy(*value, v.data(), v.size());
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

void distill_c10d_free_bytes(uint8_t *p) { std::free(p); }
}
