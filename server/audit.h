// audit.h: the audit trail (docs/ARCHITECTURE.md, "Audit entry fields").
//
// Every key operation and every refusal leaves one entry in a Redis stream:
// `vk:veh:{VIN}:audit` for a registered vehicle, `vk:audit` for everything
// else (users, and requests naming a VIN that is not registered). An entry
// has the fields `at` (Unix ms), `actor`, `op`, `vin`, `key`, `result`
// ("ok" or a gRPC status name such as "NOT_FOUND") and `detail`. Streams are
// capped with `MAXLEN ~ VK_AUDIT_MAXLEN`.
//
// Two ways to write an entry, in the same format:
//   - inside a Lua script, for entries that must commit with the change they
//     describe: embed VK_AUDIT_LUA and call vk_audit(...) (see below);
//   - from C, for refusals decided before any script runs and other events
//     with nothing to be atomic with: vk_audit_record (fire and forget).
// The reading side (ListAudit) uses vk_audit_entries_from_reply.
#ifndef VK_AUDIT_H
#define VK_AUDIT_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>
#include <protobuf-c/protobuf-c.h>

#include "app.h"
#include "grpc.h"
#include "identity.h"
#include "store.h"
#include "vkey/v1/registry.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

// The approximate cap of every audit stream (XADD MAXLEN ~).
#define VK_AUDIT_MAXLEN "100000"

// The size of an actor string: "operator:" (9) + a 64-byte subject + NUL
// fits with room to spare.
#define VK_AUDIT_ACTOR_MAX 80

// VK_AUDIT_LUA is a Lua prelude that scripts embed by string-literal
// concatenation, so their audit entries commit atomically with their change:
//
//   static const char kScript[] = VK_AUDIT_LUA
//       "local now = ARGV[1]\n"
//       "...\n"
//       "vk_audit(KEYS[3], now, ARGV[2], 'ManageKey', vin, key_id, 'ok',"
//       " 'revoked')\n";
//
// vk_audit(stream, at_ms, actor, op, vin, key, result, detail) appends one
// entry to `stream` (pass the stream's key in KEYS). `key` and `detail` may
// be nil (stored as ""). Pick the stream as vk_audit_stream does: the
// vehicle's stream when the vehicle is registered, else `vk:audit`. `at_ms`
// is the caller's clock (pass vk_wall_ms() in ARGV) so every entry of one
// operation carries the same time.
#define VK_AUDIT_LUA                                                 \
  "local function vk_audit(stream, at, actor, op, vin, key, result," \
  " detail)\n"                                                       \
  "  redis.call('XADD', stream, 'MAXLEN', '~', '" VK_AUDIT_MAXLEN    \
  "', '*',"                                                          \
  " 'at', at, 'actor', actor, 'op', op, 'vin', vin or '',"           \
  " 'key', key or '', 'result', result, 'detail', detail or '')\n"   \
  "end\n"

// vk_audit_stream writes into `out` (VK_REDIS_KEY_MAX bytes) the stream of
// `vin_or_null`: `vk:veh:{VIN}:audit`, or `vk:audit` for NULL or "". The
// VIN must already be valid (vk_vin_valid).
void vk_audit_stream(char *out, const char *vin_or_null);

// vk_audit_actor writes the actor string of `who` into `out`:
// "user:<id>", "operator:<name>" or "vehicle:<VIN>".
void vk_audit_actor(char out[VK_AUDIT_ACTOR_MAX], const vk_identity_t *who);

// vk_audit_result returns the `result` string of a gRPC status: "ok" for
// VK_GRPC_OK, else its upper-case name ("NOT_FOUND", ...). Static storage.
const char *vk_audit_result(vk_grpc_status_t status);

// vk_audit_record appends one entry from C, fire and forget: the XADD is
// queued and this returns at once; a failure (Redis down, queue full) is
// logged as a warning and otherwise ignored, since refusing or delaying the
// caller's answer over an audit entry would be worse. `vin_or_null` selects
// the stream as vk_audit_stream does, so pass a VIN only when it is valid
// and registered; to name an unregistered VIN, pass NULL and mention it in
// `detail`. `key_id` and `detail` may be NULL. Every string is copied.
void vk_audit_record(vk_app_t *app, const char *vin_or_null, const char *actor,
                     const char *op, const char *key_id, const char *result,
                     const char *detail);

// vk_audit_id_valid tells whether `id` looks like a stream entry id,
// "<ms>-<seq>" in decimal (the ListAudit page token).
bool vk_audit_id_valid(const char *id);

// vk_audit_entries_from_reply converts the reply of XRANGE / XREVRANGE on an
// audit stream into at most `max` AuditEntry messages allocated from
// `alloc` (the call's allocator; they live as long as it). Sets `*out` and
// `*out_n`. Entries whose fields are missing get "" / 0. Returns 0, VK_EPROTO
// if the reply is not shaped like a stream range, or VK_ENOMEM.
int vk_audit_entries_from_reply(ProtobufCAllocator *alloc,
                                const redisReply *reply, size_t max,
                                Vkey__V1__AuditEntry ***out, size_t *out_n);

#ifdef __cplusplus
}
#endif

#endif  // VK_AUDIT_H
