/* Checks keyrelay signed keys offline, with libsodium only.
 *
 *   kr_keys keys;            kr_keys_from_jwks(&keys, jwks_json);   // or kr_keys_from_public_key(&keys, "base64…")
 *   kr_revocations revoked;  kr_revocations_load(&revoked, list_json, &keys);   // optional
 *   kr_payload payload;
 *   kr_result r = kr_verify(license_key, &keys, &revoked, (uint64_t)time(NULL), &payload);
 *   if (r != KR_VALID) printf("refused: %s\n", kr_reason(r));
 *
 * Reasons, in the order checked: malformed, unknown_key_id, bad_signature, expired, revoked.
 * The loaders return 0 on success and -1 when the input is not what it should be. */
#ifndef KEYRELAY_VERIFY_H
#define KEYRELAY_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#define KR_MAX_KEYS 16

typedef struct {
    char kid[64];
    unsigned char public_key[32];
} kr_key;

typedef struct {
    kr_key keys[KR_MAX_KEYS];
    size_t count;
} kr_keys;

typedef struct {
    char **grants;
    size_t count;
    long long sequence;
} kr_revocations;

typedef struct {
    int version;
    char key_id[16]; /* empty for format 1 */
    char grant_id[256];
    char entitlement_id[256];
    uint32_t issued_at;
    uint32_t expires_at;        /* 0: never */
    uint32_t activations_limit; /* 0: none */
} kr_payload;

typedef enum {
    KR_VALID = 0,
    KR_MALFORMED,
    KR_UNKNOWN_KEY_ID,
    KR_BAD_SIGNATURE,
    KR_EXPIRED,
    KR_REVOKED
} kr_result;

const char *kr_reason(kr_result result);
int kr_keys_from_jwks(kr_keys *out, const char *json);
int kr_keys_from_public_key(kr_keys *out, const char *base64);
int kr_revocations_load(kr_revocations *out, const char *json, const kr_keys *keys);
void kr_revocations_free(kr_revocations *revocations);
kr_result kr_verify(const char *key, const kr_keys *keys, const kr_revocations *revoked,
                    uint64_t now, kr_payload *out);

#endif
