#include "server/tls.h"

#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "server/auth.h"

namespace ampd::server {

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

BioPtr memory_bio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in a PEM text, in order.
std::vector<X509Ptr> read_certificates(const std::string& pem) {
  std::vector<X509Ptr> out;
  BioPtr bio = memory_bio(pem);
  while (bio) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    out.push_back(std::move(cert));
  }
  ERR_clear_error();  // the read that ended the loop leaves "no start line" behind
  return out;
}

// Refuses encrypted keys instead of letting OpenSSL ask for a passphrase on the terminal.
int no_passphrase(char*, int, int, void*) {
  return -1;
}

std::string asn1_time_text(const ASN1_TIME* t) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || ASN1_TIME_print(bio.get(), t) != 1) return "?";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

}  // namespace

StatusOr<ServerTls> load_server_tls(const TlsFiles& f) {
  if (f.cert.empty() != f.key.empty()) {
    return invalid_argument(f.cert.empty() ? "--tls-key needs --tls-cert (the certificate it signs)"
                                           : "--tls-cert needs --tls-key (its private key)");
  }
  if (f.cert.empty()) {
    if (!f.client_ca.empty()) {
      return invalid_argument("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)");
    }
    return invalid_argument("no TLS files given");
  }
  ServerTls out;

  AMPD_ASSIGN_OR_RETURN(std::string cert_pem, read_file_for_flag("--tls-cert", f.cert));
  const std::vector<X509Ptr> chain = read_certificates(cert_pem);
  if (chain.empty()) {
    return invalid_argument("--tls-cert " + f.cert +
                            ": no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)");
  }
  AMPD_ASSIGN_OR_RETURN(std::string key_pem, read_file_for_flag("--tls-key", f.key));
  BioPtr key_bio = memory_bio(key_pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, no_passphrase, nullptr));
  ERR_clear_error();
  if (!key) {
    return invalid_argument("--tls-key " + f.key +
                            ": not an unencrypted PEM private key (expected -----BEGIN PRIVATE "
                            "KEY----- or -----BEGIN RSA/EC PRIVATE KEY-----)");
  }
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return invalid_argument("--tls-key " + f.key + " does not belong to the certificate in " +
                            "--tls-cert " + f.cert);
  }
  const X509* leaf = chain.front().get();
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    out.warnings.push_back("--tls-cert " + f.cert + ": the certificate expired on " +
                           asn1_time_text(X509_get0_notAfter(leaf)) + "; clients will refuse it");
  } else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
    out.warnings.push_back("--tls-cert " + f.cert + ": the certificate is not valid before " +
                           asn1_time_text(X509_get0_notBefore(leaf)) +
                           "; clients will refuse it until then");
  }
  if (std::string w = permission_warning("--tls-key", f.key); !w.empty()) {
    out.warnings.push_back(w);
  }

  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({key_pem, cert_pem});
  out.description = "TLS";
  if (!f.client_ca.empty()) {
    AMPD_ASSIGN_OR_RETURN(std::string ca_pem, read_file_for_flag("--tls-client-ca", f.client_ca));
    if (read_certificates(ca_pem).empty()) {
      return invalid_argument("--tls-client-ca " + f.client_ca +
                              ": no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)");
    }
    options.pem_root_certs = std::move(ca_pem);
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    out.description = "mutual TLS";
  } else {
    options.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  out.credentials = grpc::SslServerCredentials(options);
  if (!out.credentials) return invalid_argument("gRPC refused the TLS certificate and key");
  return out;
}

}  // namespace ampd::server
