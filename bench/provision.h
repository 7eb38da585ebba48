// provision.h: makes the fleet a scenario needs through vkeyd's public API
// only (RegistryService, KeyService, VerifyService), never by writing
// Redis: a user (and for share, the user they share with), N vehicles each with
// its own Ed25519 key, the user as their owner, an owner key per vehicle held
// by a phone key, and, as needed, fresh keys (verify-cold) and a session per
// vehicle (check).
//
// Credentials: operator and user bearer tokens are minted with vkeyd's
// development identity issuer key, read from <data-dir>/identity-issuer.key.
// Re-runs: VINs, vehicle and phone keys and request ids derive from --seed,
// so a second run against the same vkeyd finds its vehicles (ALREADY_EXISTS
// is expected) and gets the same owner keys back (idempotent ApplyKey).
#ifndef VK_BENCH_PROVISION_H
#define VK_BENCH_PROVISION_H

#include <stddef.h>
#include <stdint.h>

#include "rpc.h"
#include "workload.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vk_bench_provision_s {
  vk_bench_rpc_config_t rpc;  // the server; connections and streams used
  const char *data_dir;       // vkeyd's data directory
  uint32_t seed;
  uint32_t vehicles;
  int phone_alg;       // VK_BENCH_ALG_* of the owner keys
  int owner_keys;      // apply an owner key per vehicle
  int sessions;        // open a session per vehicle
  int recipient;       // register the user the owner shares with (share)
  uint32_t cold_keys;  // extra keys made for this run only (verify-cold)
  int quiet;           // no progress on stderr
} vk_bench_provision_t;

// vk_bench_provision fills `fleet`. Returns 0; VK_ENOTFOUND or VK_EPROTO
// when the issuer key cannot be read; VK_EUNAVAIL when the server cannot
// be reached; VK_EPROTO when a call fails (the message is in `err`); or
// VK_ENOMEM. On failure the fleet is cleaned up.
int vk_bench_provision(vk_bench_fleet_t *fleet, char *err, size_t errlen,
                       const vk_bench_provision_t *p);

#ifdef __cplusplus
}
#endif

#endif  // VK_BENCH_PROVISION_H
