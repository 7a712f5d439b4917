#ifndef COPENSSL_SHIM_H
#define COPENSSL_SHIM_H
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/sha.h>
#include <openssl/rand.h>

/* An HMAC-SHA256 context keyed once: the algorithm and digest are looked up
 * and the key's inner and outer pads hashed here, not on every message.
 * NULL when libcrypto refuses (the caller falls back to one-shot HMAC()). */
static inline EVP_MAC_CTX *iw_hmac_sha256_keyed(const unsigned char *key, size_t key_length) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
    if (mac == NULL) return NULL;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the context keeps its own reference */
    if (ctx == NULL) return NULL;
    OSSL_PARAM params[2];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_MAC_init(ctx, key, key_length, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The tag of one message under a keyed context, which is only read (so many
 * threads may share it): the work happens on a copy. 1 on success. */
static inline int iw_hmac_sha256_tag(const EVP_MAC_CTX *keyed, const unsigned char *data, size_t length,
                                     unsigned char out[32]) {
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(keyed);
    if (ctx == NULL) return 0;
    size_t out_length = 0;
    int ok = EVP_MAC_update(ctx, data, length) == 1 && EVP_MAC_final(ctx, out, &out_length, 32) == 1
             && out_length == 32;
    EVP_MAC_CTX_free(ctx);
    return ok;
}
#endif
