// connect.h: the connection-scale scenario. Every vehicle of the fleet
// opens its vehicle channel (VehicleService.OpenChannel, authenticated by
// a VehicleAssertion its signer thread signed) and holds it: -m vehicles
// per h2c connection (one by default), connections spread over --sources
// 127.0.0.x source addresses so the local port range never runs out.
//
// Measured: vkeyd's RSS and Redis's used_memory (INFO memory, raw RESP)
// before the first channel and once every channel is confirmed (each
// vehicle's waiting ISSUED event arrived), per connected vehicle; then one
// key event (ApplyKey) pushed to --push vehicles at --push-rate, timed from
// the ApplyKey call to the event's arrival on the vehicle's channel; then
// the channels are held --hold seconds and sampled again.
#ifndef VK_BENCH_CONNECT_H
#define VK_BENCH_CONNECT_H

#include "args.h"
#include "signer.h"
#include "workload.h"

#ifdef __cplusplus
extern "C" {
#endif

// vk_bench_connect_run runs the scenario and prints its report (text, or
// JSON with cfg->json). `signer` builds one OpenChannel per vehicle.
// `redis_unprovisioned` is Redis's used_memory before the fleet was
// provisioned (0: unknown), for the figure of Redis memory per vehicle
// registered with its owner and one key.
// Returns the process exit status: 0 when every channel was confirmed, 1
// when some were not (the report says which), 2 when the server cannot be
// reached.
int vk_bench_connect_run(const vk_bench_config_t *cfg, vk_bench_fleet_t *fleet,
                         vk_bench_signer_t *signer,
                         uint64_t redis_unprovisioned);

// vk_bench_connect_redis_addr writes where the connect scenario reads
// Redis's INFO: --redis, else DATA-DIR/redis.sock; "" if neither.
void vk_bench_connect_redis_addr(char *out, size_t cap,
                                 const vk_bench_config_t *cfg);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_CONNECT_H
