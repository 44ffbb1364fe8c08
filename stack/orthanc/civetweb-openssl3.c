/*
 * HTTPS=on natively: what lets Debian 12's Orthanc 1.10.1 serve HTTPS at all.
 *
 * Orthanc's HTTP server is Debian's libcivetweb 1.15, which loads OpenSSL at run time
 * (dlopen "libssl.so" and "libcrypto.so") and, after every TLS handshake, calls
 * SSL_get_peer_certificate. OpenSSL 3 no longer exports that name (it became a macro
 * for SSL_get1_peer_certificate), so civetweb calls a null pointer and Orthanc dies
 * with SIGSEGV on the first HTTPS request.
 *
 * ops/tls.py builds this file into TLS_DIR/civetweb-openssl3/libssl.so (linked to the
 * system's libssl.so.3, next to a libcrypto.so link to libcrypto.so.3), and Orthanc
 * starts with LD_LIBRARY_PATH naming that directory (ops/orthanc_config.orthanc_env):
 * civetweb then finds every OpenSSL function, the old name included. Nothing else in
 * Orthanc is affected: libraries linked by version (libssl.so.3) are found as before.
 */

typedef struct ssl_st SSL;
typedef struct x509_st X509;

extern X509 *SSL_get1_peer_certificate(const SSL *ssl);

/* OpenSSL 1.1's function: the peer's certificate, with a reference the caller frees. */
X509 *SSL_get_peer_certificate(const SSL *ssl)
{
    return SSL_get1_peer_certificate(ssl);
}
