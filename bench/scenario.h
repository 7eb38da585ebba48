// scenario.h: what vkey-bench sends and how it checks the answers.
//
// A scenario is one row of a table: a name, where its requests come from,
// and `check`, which validates one response message. Requests come either
// from a pool built once before the run (`build` writes request number i:
// the protobuf message; the harness adds the 5-byte gRPC prefix), or, for
// scenarios whose requests must be fresh (a new challenge signed by the
// phone, a new session counter), from signer threads (workload.h) that keep
// a ring of ready requests a little ahead of the event loop; their CPU is
// the load generator's, and counted as such. Those scenarios need a fleet
// of vehicles, users and keys, which vkey-bench provisions through vkeyd's
// public API first (provision.h).
#ifndef VK_BENCH_SCENARIO_H
#define VK_BENCH_SCENARIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The largest request message and response message the harness handles.
#define VK_BENCH_MAX_MESSAGE (1u << 20)

typedef enum {
  VK_BENCH_KIND_RPC = 0,  // requests over -c connections x -m streams
  // Connection scale: hold a vehicle channel per vehicle (connect.c).
  VK_BENCH_KIND_CONNECT = 1,
} vk_bench_kind_t;

// What a scenario's requests need (vk_bench_scenario_t.workload).
typedef enum {
  VK_BENCH_WORK_POOL = 0,     // prebuilt pool, nothing provisioned
  VK_BENCH_WORK_VERIFY,       // VerifyKey in vehicle sessions, Ed25519 phones
  VK_BENCH_WORK_VERIFY_P256,  // the same with P-256 phones
  VK_BENCH_WORK_VERIFY_COLD,  // a fresh key per request
  VK_BENCH_WORK_CHECK,        // CheckKeyStatus in vehicle sessions
  VK_BENCH_WORK_CONNECT,      // OpenChannel per vehicle (assertions)
  VK_BENCH_WORK_APPLY,        // ApplyKey by the owner: a new key each
  VK_BENCH_WORK_MIXED,        // verify, check and apply (workload.h)
  VK_BENCH_WORK_SHARE,        // Authorize, then Redeem (two calls an op)
} vk_bench_work_t;

// vk_bench_buf_t is a growable byte buffer capped at VK_BENCH_MAX_MESSAGE.
typedef struct vk_bench_buf_s {
  uint8_t *data;
  size_t len;
  size_t cap;
} vk_bench_buf_t;

// vk_bench_buf_append copies `len` bytes to the end of `b`. Returns 0,
// VK_ETOOBIG past the cap, or VK_ENOMEM.
int vk_bench_buf_append(vk_bench_buf_t *b, const void *data, size_t len);

// vk_bench_buf_cleanup frees the bytes; `b` is then empty and reusable.
void vk_bench_buf_cleanup(vk_bench_buf_t *b);

// One item of request metadata. `name` is a static lower-case string;
// "-bin" values are given already base64-encoded.
typedef struct vk_bench_hdr_s {
  const char *name;
  const char *value;
  size_t value_len;
} vk_bench_hdr_t;

// Scenario parameters that come from the command line.
typedef struct vk_bench_params_s {
  const char *health_service;  // HealthCheckRequest.service; "" by default
  const char *data_dir;        // --data-dir: vkeyd's, for the issuer key
  uint32_t vehicles;           // --vehicles: fleet size
  uint32_t seed;               // --seed: names the fleet (VINs, keys)
  uint32_t signers;            // --signers: signing threads
  uint32_t ring;               // --ring: pre-built requests per signer
  uint32_t prebuild;           // --prebuild: requests built before the run
  uint32_t cold_keys;          // --cold-keys: keys made for verify-cold
  uint32_t sources;            // --sources: 127.0.0.x source addresses
  uint32_t push;               // --push: connect: vehicles sent an event
  double push_rate;            // --push-rate: those events per second
  double hold_s;               // --hold: connect: seconds held at the end
  const char *redis;           // --redis: unix socket or HOST:PORT (INFO)
} vk_bench_params_t;

typedef struct vk_bench_scenario_s {
  const char *name;
  const char *summary;  // one line for --help
  int available;        // 0: listed in --help, refused on use
  const char *missing;  // why it is not available yet
  vk_bench_kind_t kind;
  vk_bench_work_t workload;
  size_t pool_size;  // POOL: distinct requests to build; used round-robin
  // build writes the protobuf message of request number `index` (0 <=
  // index < pool_size) into `out` and sets `*out_path` to its gRPC method
  // path (static storage). Returns 0 or a VK_E* code.
  int (*build)(vk_bench_buf_t *out, const char **out_path,
               const vk_bench_params_t *params, size_t index);
  // check validates one response message (without the gRPC prefix) of a
  // call that ended with grpc-status 0. Returns 0, or VK_EPROTO and sets
  // `*out_why` to a static reason (for verify: the deny reason's name);
  // the report counts refusals by reason.
  // `path` is the request's method (a mix sends several).
  int (*check)(const char **out_why, const char *path, const uint8_t *msg,
               size_t len);
} vk_bench_scenario_t;

// vk_bench_scenarios is the table, in --help order; vk_bench_nscenarios its
// length.
extern const vk_bench_scenario_t vk_bench_scenarios[];
extern const size_t vk_bench_nscenarios;

// vk_bench_scenario_find returns the row called `name`, available or not, or
// NULL.
const vk_bench_scenario_t *vk_bench_scenario_find(const char *name);

// One built request: the method path, the framed gRPC body and its own
// metadata, if any (the source's common metadata is added to every one).
typedef struct vk_bench_req_s {
  const char *path;
  const uint8_t *body;  // 5-byte gRPC prefix + message, owned by the pool
  size_t body_len;
  vk_bench_hdr_t hdr;  // name NULL: none
} vk_bench_req_t;

// vk_bench_next_fn continues an operation of several calls (share:
// Authorize, then Redeem the code set it returned). The event loop calls it
// with the response message `msg` of a successful call to `path`; it
// writes the framed body of the operation's next call into `out`
// (replacing its contents) and that call's method and own metadata into
// `*out_req` (body pointing into `out`; the metadata must outlive the
// call). No signing here: it runs on the loop. Returns 0; VK_ENOTFOUND
// when the operation is complete; VK_EPROTO with a static `*out_why` when
// the response allows no next call; VK_ETOOBIG or VK_ENOMEM.
typedef int (*vk_bench_next_fn)(void *ctx, vk_bench_buf_t *out,
                                vk_bench_req_t *out_req, const char **out_why,
                                const char *path, const uint8_t *msg,
                                size_t len);

// vk_bench_pool_t holds every request of a scenario, built before the run.
typedef struct vk_bench_pool_s {
  vk_bench_req_t *reqs;
  size_t n;
  uint8_t *bytes;  // all bodies, back to back
} vk_bench_pool_t;

// vk_bench_pool_build builds the scenario's pool_size requests, each framed
// with the uncompressed gRPC prefix. Returns 0; VK_EINVAL if the scenario is
// not available; a build error; or VK_ENOMEM. On failure `*pool` is zeroed.
// Free with vk_bench_pool_cleanup.
int vk_bench_pool_build(vk_bench_pool_t *pool, const vk_bench_scenario_t *sc,
                        const vk_bench_params_t *params);

// vk_bench_pool_cleanup frees the pool. Safe on a zeroed pool.
void vk_bench_pool_cleanup(vk_bench_pool_t *pool);

// vk_bench_grpc_unframe reads the single uncompressed gRPC message in a
// response body. Returns 0 and sets `*out_msg`/`*out_len` to a view into
// `body`; VK_EPROTO for a truncated, compressed, oversized or trailing-data
// body (and sets `*out_why`).
int vk_bench_grpc_unframe(const uint8_t **out_msg, size_t *out_len,
                          const char **out_why, const uint8_t *body,
                          size_t body_len);

// vk_bench_grpc_frame writes the 5-byte uncompressed gRPC prefix of a
// `len`-byte message.
void vk_bench_grpc_frame(uint8_t prefix[5], size_t len);

// Checks of the vkey responses, exposed for the tests.
int vk_bench_check_verify(const char **out_why, const uint8_t *msg, size_t len);
int vk_bench_check_status(const char **out_why, const uint8_t *msg, size_t len);
int vk_bench_check_apply(const char **out_why, const uint8_t *msg, size_t len);
// Authorize: a printable code set ("vkc1.") and an outstanding grant.
int vk_bench_check_authorize(const char **out_why, const uint8_t *msg,
                             size_t len);
// Redeem: at least one key, every one ACTIVE and signed; the grant
// redeemed. A redeem that gives no keys is refused.
int vk_bench_check_redeem(const char **out_why, const uint8_t *msg, size_t len);

// vk_bench_grpc_status_name returns the canonical name of gRPC status code
// `code` ("OK", "CANCELLED", ... "UNAUTHENTICATED"), or "UNKNOWN_CODE".
const char *vk_bench_grpc_status_name(int code);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_SCENARIO_H
