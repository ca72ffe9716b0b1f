#include "keyrelay_verify.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *kr_reason(kr_result result) {
    static const char *names[] = {"valid", "malformed", "unknown_key_id", "bad_signature",
                                  "expired", "revoked"};
    return names[result];
}

/* ---- just enough JSON for a JWK Set and a revocation list ---- */

typedef struct json {
    char type; /* o(bject) a(rray) s(tring) n(umber) l(iteral) */
    char *text; /* a string's value, a number's or literal's spelling */
    struct json **items;
    char **names; /* an object's member names */
    size_t count;
} json;

static void json_free(json *v) {
    if (!v) return;
    for (size_t i = 0; i < v->count; i++) {
        json_free(v->items[i]);
        if (v->names) free(v->names[i]);
    }
    free(v->items);
    free(v->names);
    free(v->text);
    free(v);
}

static void skip_space(const char **p) {
    while (**p == ' ' || **p == '\t' || **p == '\r' || **p == '\n') (*p)++;
}

static char *parse_string(const char **p) {
    if (**p != '"') return NULL;
    (*p)++;
    size_t cap = strlen(*p) + 1, n = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    while (**p && **p != '"') {
        char c = *(*p)++;
        if (c == '\\') {
            c = *(*p)++;
            if (c == 'u') {
                unsigned code = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *(*p)++;
                    code = code * 16 + (unsigned)(h >= 'a' ? h - 'a' + 10 : h >= 'A' ? h - 'A' + 10 : h - '0');
                }
                if (code < 0x80) out[n++] = (char)code;
                else if (code < 0x800) { out[n++] = (char)(0xc0 | code >> 6); out[n++] = (char)(0x80 | (code & 0x3f)); }
                else { out[n++] = (char)(0xe0 | code >> 12); out[n++] = (char)(0x80 | ((code >> 6) & 0x3f)); out[n++] = (char)(0x80 | (code & 0x3f)); }
                continue;
            }
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
        }
        out[n++] = c;
    }
    if (**p != '"') { free(out); return NULL; }
    (*p)++;
    out[n] = '\0';
    return out;
}

static json *parse_value(const char **p, int depth);

static int add_item(json *v, json *item, char *name) {
    json **items = realloc(v->items, (v->count + 1) * sizeof *items);
    if (!items) return -1;
    v->items = items;
    if (v->type == 'o') {
        char **names = realloc(v->names, (v->count + 1) * sizeof *names);
        if (!names) return -1;
        v->names = names;
        v->names[v->count] = name;
    }
    v->items[v->count++] = item;
    return 0;
}

static json *parse_value(const char **p, int depth) {
    skip_space(p);
    json *v = calloc(1, sizeof *v);
    if (!v || depth > 32) { free(v); return NULL; }
    if (**p == '{' || **p == '[') {
        char close = **p == '{' ? '}' : ']';
        v->type = **p == '{' ? 'o' : 'a';
        (*p)++;
        skip_space(p);
        if (**p == close) { (*p)++; return v; }
        for (;;) {
            char *name = NULL;
            if (v->type == 'o') {
                skip_space(p);
                if (!(name = parse_string(p))) break;
                skip_space(p);
                if (*(*p)++ != ':') { free(name); break; }
            }
            json *item = parse_value(p, depth + 1);
            if (!item || add_item(v, item, name) != 0) { free(name); json_free(item); break; }
            skip_space(p);
            if (**p == ',') { (*p)++; continue; }
            if (**p == close) { (*p)++; return v; }
            break;
        }
        json_free(v);
        return NULL;
    }
    if (**p == '"') {
        v->type = 's';
        if ((v->text = parse_string(p))) return v;
        free(v);
        return NULL;
    }
    const char *start = *p;
    while (**p && strchr("+-0123456789.eEtrufalsn", **p)) (*p)++;
    v->type = (*start == 't' || *start == 'f' || *start == 'n') ? 'l' : 'n';
    size_t n = (size_t)(*p - start);
    if (n == 0 || !(v->text = malloc(n + 1))) { free(v); return NULL; }
    memcpy(v->text, start, n);
    v->text[n] = '\0';
    return v;
}

static json *json_parse(const char *text) {
    json *v = parse_value(&text, 0);
    skip_space(&text);
    if (v && *text) { json_free(v); return NULL; }
    return v;
}

static const json *member(const json *obj, const char *name) {
    for (size_t i = 0; obj && obj->type == 'o' && i < obj->count; i++)
        if (strcmp(obj->names[i], name) == 0) return obj->items[i];
    return NULL;
}

static const char *string_member(const json *obj, const char *name) {
    const json *v = member(obj, name);
    return v && v->type == 's' ? v->text : NULL;
}

/* ---- keys ---- */

/* Canonical unpadded base64url into out (at most cap bytes); the length, or -1. */
static long b64url(const char *text, unsigned char *out, size_t cap) {
    size_t len = 0;
    if (sodium_base642bin(out, cap, text, strlen(text), NULL, &len, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return -1;
    char again[1024];
    if (sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING) > sizeof again) return -1;
    sodium_bin2base64(again, sizeof again, out, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return strcmp(again, text) == 0 ? (long)len : -1;
}

int kr_keys_from_jwks(kr_keys *out, const char *text) {
    if (sodium_init() < 0) return -1;
    json *set = json_parse(text);
    const json *keys = member(set, "keys");
    out->count = 0;
    for (size_t i = 0; keys && keys->type == 'a' && i < keys->count && out->count < KR_MAX_KEYS; i++) {
        const json *jwk = keys->items[i];
        const char *kty = string_member(jwk, "kty"), *crv = string_member(jwk, "crv");
        const char *x = string_member(jwk, "x"), *kid = string_member(jwk, "kid");
        kr_key *key = &out->keys[out->count];
        if (kty && crv && x && kid && strcmp(kty, "OKP") == 0 && strcmp(crv, "Ed25519") == 0 &&
            strlen(kid) < sizeof key->kid && b64url(x, key->public_key, 32) == 32) {
            strcpy(key->kid, kid);
            out->count++;
        }
    }
    int ok = keys && keys->type == 'a' ? 0 : -1;
    json_free(set);
    return ok;
}

int kr_keys_from_public_key(kr_keys *out, const char *base64) {
    size_t len = 0;
    if (sodium_init() < 0 ||
        sodium_base642bin(out->keys[0].public_key, 32, base64, strlen(base64), NULL, &len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || len != 32)
        return -1;
    char thumbprint[128], x[64];
    unsigned char digest[crypto_hash_sha256_BYTES];
    sodium_bin2base64(x, sizeof x, out->keys[0].public_key, 32, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(thumbprint, sizeof thumbprint, "{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"%s\"}", x);
    crypto_hash_sha256(digest, (const unsigned char *)thumbprint, strlen(thumbprint));
    sodium_bin2base64(out->keys[0].kid, sizeof out->keys[0].kid, digest, 8, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    out->count = 1;
    return 0;
}

int kr_revocations_load(kr_revocations *out, const char *text, const kr_keys *keys) {
    memset(out, 0, sizeof *out);
    json *served = json_parse(text), *listed = NULL;
    const char *list = string_member(served, "list"), *signature = string_member(served, "signature");
    const char *kid = string_member(served, "kid");
    size_t cap = list ? strlen(list) : 0;
    unsigned char *bytes = malloc(cap + 1), sig[64];
    long len = list && bytes ? b64url(list, bytes, cap) : -1;
    int signed_ok = 0;
    if (len >= 0 && signature && b64url(signature, sig, sizeof sig) == 64)
        for (size_t i = 0; i < keys->count; i++)
            if ((!kid || strcmp(kid, keys->keys[i].kid) == 0) &&
                crypto_sign_verify_detached(sig, bytes, (unsigned long long)len, keys->keys[i].public_key) == 0)
                signed_ok = 1;
    if (signed_ok) {
        bytes[len] = '\0';
        listed = json_parse((const char *)bytes);
    }
    const json *revoked = member(listed, "revoked"), *sequence = member(listed, "sequence");
    int ok = revoked && revoked->type == 'a' && sequence && sequence->type == 'n' ? 0 : -1;
    if (ok == 0) {
        out->sequence = atoll(sequence->text);
        out->grants = calloc(revoked->count + 1, sizeof *out->grants);
        for (size_t i = 0; out->grants && i < revoked->count; i++) {
            const char *grant = string_member(revoked->items[i], "grant_id");
            char *copy = grant ? malloc(strlen(grant) + 1) : NULL;
            if (copy) out->grants[out->count++] = strcpy(copy, grant);
        }
    }
    free(bytes);
    json_free(served);
    json_free(listed);
    return ok;
}

void kr_revocations_free(kr_revocations *revocations) {
    for (size_t i = 0; i < revocations->count; i++) free(revocations->grants[i]);
    free(revocations->grants);
    memset(revocations, 0, sizeof *revocations);
}

/* ---- signed keys ---- */

/* Well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t more = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 9;
        if (more == 9 || i + more >= n) return 0;
        unsigned code = more == 0 ? c : c & (0x3f >> more);
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            code = code << 6 | (s[i + k] & 0x3f);
        }
        static const unsigned least[] = {0, 0x80, 0x800, 0x10000};
        if (code < least[more] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
        i += 1 + more;
    }
    return 1;
}

static uint32_t number_at(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

kr_result kr_verify(const char *key, const kr_keys *keys, const kr_revocations *revoked,
                    uint64_t now, kr_payload *out) {
    unsigned char raw[600];
    long len = strlen(key) < 800 ? b64url(key, raw, sizeof raw) : -1;
    if (len < 1 || (raw[0] != 1 && raw[0] != 2)) return KR_MALFORMED;
    memset(out, 0, sizeof *out);
    out->version = raw[0];
    size_t at = raw[0] == 2 ? 9 : 1;
    if ((size_t)len < 64 + at + 12) return KR_MALFORMED;
    size_t payload_len = (size_t)len - 64, pos = at + 12;
    char *ids[2] = {out->grant_id, out->entitlement_id};
    for (int i = 0; i < 2; i++) {
        if (pos >= payload_len || pos + 1 + raw[pos] > payload_len) return KR_MALFORMED;
        size_t n = raw[pos];
        if (!utf8_valid(raw + pos + 1, n)) return KR_MALFORMED;
        memcpy(ids[i], raw + pos + 1, n);
        ids[i][n] = '\0';
        pos += 1 + n;
    }
    if (pos != payload_len) return KR_MALFORMED;
    int found = 0, signed_ok = 0;
    if (raw[0] == 2)
        sodium_bin2base64(out->key_id, sizeof out->key_id, raw + 1, 8, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    for (size_t i = 0; i < keys->count; i++) {
        if (raw[0] == 2 && strcmp(keys->keys[i].kid, out->key_id) != 0) continue;
        found = 1;
        if (crypto_sign_verify_detached(raw + payload_len, raw, payload_len, keys->keys[i].public_key) == 0)
            signed_ok = 1;
    }
    if (raw[0] == 2 && !found) return KR_UNKNOWN_KEY_ID;
    if (!signed_ok) return KR_BAD_SIGNATURE;
    out->issued_at = number_at(raw + at);
    out->expires_at = number_at(raw + at + 4);
    out->activations_limit = number_at(raw + at + 8);
    if (out->expires_at != 0 && now >= out->expires_at) return KR_EXPIRED;
    for (size_t i = 0; revoked && i < revoked->count; i++)
        if (strcmp(revoked->grants[i], out->grant_id) == 0) return KR_REVOKED;
    return KR_VALID;
}
