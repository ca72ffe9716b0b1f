/* Reads keys from stdin, one per line, and prints one JSON answer per line:
 *   keyrelay-verify --jwks FILE | --public-key BASE64 [--revocations FILE] < keys.txt */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keyrelay_verify.h"

static char *slurp(FILE *f) {
    size_t cap = 4096, n = 0, got;
    char *text = malloc(cap);
    while (text && (got = fread(text + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) text = realloc(text, cap *= 2);
    }
    if (text) text[n] = '\0';
    return text;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    char *text = f ? slurp(f) : NULL;
    if (f) fclose(f);
    return text;
}

static void quoted(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static void number_or_null(uint32_t n) {
    if (n) printf("%u", n);
    else printf("null");
}

int main(int argc, char **argv) {
    const char *jwks = NULL, *public_key = NULL, *list = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--jwks") == 0) jwks = argv[i + 1];
        if (strcmp(argv[i], "--public-key") == 0) public_key = argv[i + 1];
        if (strcmp(argv[i], "--revocations") == 0) list = argv[i + 1];
    }
    kr_keys keys;
    char *text = jwks ? read_file(jwks) : NULL;
    if (jwks ? !text || kr_keys_from_jwks(&keys, text) != 0
             : !public_key || kr_keys_from_public_key(&keys, public_key) != 0) {
        fprintf(stderr, "give --jwks FILE (a JWK Set) or --public-key BASE64\n");
        return 2;
    }
    free(text);
    kr_revocations revoked = {0};
    if (list) {
        text = read_file(list);
        if (!text || kr_revocations_load(&revoked, text, &keys) != 0) {
            fprintf(stderr, "the revocation list %s is not signed by a trusted key\n", list);
            return 2;
        }
        free(text);
    }
    char *input = slurp(stdin);
    for (char *line = input, *end; input && (end = strchr(line, '\n')); line = end + 1) {
        *end = '\0';
        kr_payload p;
        kr_result r = kr_verify(line, &keys, list ? &revoked : NULL, (uint64_t)time(NULL), &p);
        if (r != KR_VALID) {
            printf("{\"valid\":false,\"reason\":\"%s\"}\n", kr_reason(r));
            continue;
        }
        printf("{\"valid\":true,\"version\":%d,\"key_id\":", p.version);
        if (p.key_id[0]) quoted(p.key_id);
        else printf("null");
        printf(",\"grant_id\":");
        quoted(p.grant_id);
        printf(",\"entitlement_id\":");
        quoted(p.entitlement_id);
        printf(",\"issued_at\":%u,\"expires_at\":", p.issued_at);
        number_or_null(p.expires_at);
        printf(",\"activations_limit\":");
        number_or_null(p.activations_limit);
        printf("}\n");
    }
    free(input);
    kr_revocations_free(&revoked);
    return 0;
}
