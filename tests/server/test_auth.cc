// The security pieces of `ampd serve` without a server: bearer-token checks (server/auth.*),
// reading the token, loopback addresses, the TLS files (server/tls.*, with certificates made
// by make_test_certs.sh) and the ampd_auth_failures_total counter.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <prometheus/text_serializer.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "server/auth.h"
#include "server/metrics.h"
#include "server/tls.h"

namespace ampd::server {
namespace {

namespace fs = std::filesystem;

constexpr char kToken[] = "tok-3f1d9a7c5b2e4f60a1b2c3d4e5f60718";

bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ampd-auth-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& content, int mode = 0600) const {
    const std::string p = (fs::path(path_) / name).string();
    std::ofstream(p, std::ios::binary) << content;
    ::chmod(p.c_str(), static_cast<mode_t>(mode));
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- BearerAuth --------------------------------------------------------------------------

TEST(BearerAuth, AcceptsOnlyTheRightBearerToken) {
  BearerAuth auth(kToken);
  const std::string right = std::string("Bearer ") + kToken;
  EXPECT_EQ(auth.check({right}), AuthResult::kOk);
  EXPECT_EQ(auth.check({std::string("bearer  ") + kToken + " "}), AuthResult::kOk);
  EXPECT_EQ(auth.check({}), AuthResult::kMissing);
  EXPECT_EQ(auth.check({"Bearer wrong"}), AuthResult::kWrongToken);
  // A prefix or an extension of the right token is wrong too.
  EXPECT_EQ(auth.check({right.substr(0, right.size() - 1)}), AuthResult::kWrongToken);
  EXPECT_EQ(auth.check({right + "x"}), AuthResult::kWrongToken);
  EXPECT_EQ(auth.check({kToken}), AuthResult::kMalformed);  // no scheme
  EXPECT_EQ(auth.check({std::string("Basic ") + kToken}), AuthResult::kMalformed);
  EXPECT_EQ(auth.check({"Bearer "}), AuthResult::kMalformed);
  EXPECT_EQ(auth.check({right, right}), AuthResult::kMalformed);  // sent twice
}

TEST(BearerAuth, FailureMessagesTeachAndHoldNoToken) {
  for (AuthResult r : {AuthResult::kMissing, AuthResult::kMalformed, AuthResult::kWrongToken}) {
    const std::string m = auth_failure_message(r);
    EXPECT_TRUE(has(m, "authorization: Bearer <token>")) << m;
    EXPECT_TRUE(has(m, "--token-file")) << m;
    EXPECT_FALSE(has(m, kToken)) << m;
  }
  EXPECT_STREQ(auth_result_label(AuthResult::kWrongToken), "wrong_token");
  EXPECT_STREQ(auth_result_label(AuthResult::kMissing), "missing");
  EXPECT_STREQ(auth_result_label(AuthResult::kMalformed), "malformed");
}

// ---- reading the token ---------------------------------------------------------------------

TEST(TokenFile, TrimsTheNewlineAndWarnsAboutLooseModes) {
  TempDir dir;
  auto t = load_token_file("--token-file", dir.write("token", std::string(kToken) + "\n"));
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->token, kToken);
  EXPECT_TRUE(t->warnings.empty());

  const std::string loose = dir.write("loose", std::string(kToken) + "\n", 0644);
  t = load_token_file("--token-file", loose);
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->warnings.size(), 1u);
  EXPECT_TRUE(has(t->warnings[0], "--token-file " + loose + " may be read by other users"))
      << t->warnings[0];
  EXPECT_TRUE(has(t->warnings[0], "0644")) << t->warnings[0];

  t = load_token_file("--token-file", dir.write("short", "abc"));
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->warnings.size(), 1u);
  EXPECT_TRUE(has(t->warnings[0], "only 3 characters")) << t->warnings[0];
}

TEST(TokenFile, BadFilesNameTheFlagAndTheFileButNeverTheContent) {
  TempDir dir;
  const std::string missing = dir.path() + "/nope";
  auto t = load_token_file("--token-file", missing);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.status().message(),
            "--token-file " + missing + ": cannot read: No such file or directory");

  t = load_token_file("--token-file", dir.path());
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(has(t.status().message(), "it is a directory")) << t.status().message();

  const std::string empty = dir.write("empty", " \n\n");
  t = load_token_file("--token-file", empty);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(), "--token-file " + empty +
                                      ": the token is empty; put a random secret there, e.g. "
                                      "`openssl rand -hex 32`");

  const std::string spaced = dir.write("spaced", "my secret token value");
  t = load_token_file("--token-file", spaced);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(has(t.status().message(), "--token-file " + spaced + ": the token may only hold"))
      << t.status().message();
  EXPECT_FALSE(has(t.status().message(), "secret")) << t.status().message();

  t = load_token_file("--token-file", dir.write("big", std::string(5000, 'a')));
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(has(t.status().message(), "too large")) << t.status().message();

  auto v = check_token_value("AMPD_TOKEN", "has\ttab inside");
  ASSERT_FALSE(v.ok());
  EXPECT_TRUE(has(v.status().message(), "AMPD_TOKEN: the token may only hold"));
  v = check_token_value("AMPD_TOKEN", std::string(kToken) + "\n");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->token, kToken);
}

// ---- loopback --------------------------------------------------------------------------------

TEST(Loopback, OnlyAddressesThatOtherMachinesCannotReach) {
  for (const char* a : {"127.0.0.1:50051", "127.1.2.3:1", "localhost:50051", "LOCALHOST:1",
                        "[::1]:50051", "unix:/run/ampd.sock", "unix-abstract:ampd",
                        "ipv4:127.0.0.1:5", "dns:///localhost:50051"}) {
    EXPECT_TRUE(is_loopback_address(a)) << a;
  }
  for (const char* a : {"0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051", "gpu-box:50051", ":50051",
                        "128.0.0.1:1", "[::ffff:10.0.0.1]:1"}) {
    EXPECT_FALSE(is_loopback_address(a)) << a;
  }
}

// ---- TLS files -------------------------------------------------------------------------------

class TlsFilesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    certs_ = dir_->path() + "/certs";
    const std::string cmd = std::string(MAKE_TEST_CERTS) + " " + certs_ + " > " + dir_->path() +
                            "/make_test_certs.log 2>&1";
    made_ = std::system(cmd.c_str()) == 0;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(made_) << "make_test_certs.sh failed (is openssl there?)"; }
  static std::string cert(const std::string& name) { return certs_ + "/" + name; }

  static TempDir* dir_;
  static std::string certs_;
  static bool made_;
};
TempDir* TlsFilesTest::dir_ = nullptr;
std::string TlsFilesTest::certs_;
bool TlsFilesTest::made_ = false;

TEST_F(TlsFilesTest, GoodFilesMakeCredentials) {
  auto tls = load_server_tls({cert("server.crt"), cert("server.key"), ""});
  ASSERT_TRUE(tls.ok()) << tls.status().message();
  EXPECT_NE(tls->credentials, nullptr);
  EXPECT_EQ(tls->description, "TLS");
  EXPECT_TRUE(tls->warnings.empty());
  tls = load_server_tls({cert("server.crt"), cert("server.key"), cert("ca.crt")});
  ASSERT_TRUE(tls.ok()) << tls.status().message();
  EXPECT_EQ(tls->description, "mutual TLS");
}

TEST_F(TlsFilesTest, EachBadFileIsNamedWithItsFlag) {
  auto expect_error = [](const TlsFiles& f, const std::string& want) {
    auto tls = load_server_tls(f);
    ASSERT_FALSE(tls.ok()) << "accepted: " << want;
    EXPECT_EQ(tls.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(has(tls.status().message(), want)) << tls.status().message();
  };
  const std::string missing = dir_->path() + "/missing.crt";
  expect_error({missing, cert("server.key"), ""},
               "--tls-cert " + missing + ": cannot read: No such file or directory");
  expect_error({cert("server.crt"), missing, ""},
               "--tls-key " + missing + ": cannot read: No such file or directory");
  expect_error({cert("server.crt"), cert("server.key"), missing},
               "--tls-client-ca " + missing + ": cannot read");
  // A key in the place of the certificate, and the other way round.
  expect_error({cert("server.key"), cert("server.key"), ""},
               "--tls-cert " + cert("server.key") + ": no PEM certificate in it");
  expect_error({cert("server.crt"), cert("server.crt"), ""},
               "--tls-key " + cert("server.crt") + ": not an unencrypted PEM private key");
  expect_error({cert("server.crt"), cert("client.key"), ""},
               "--tls-key " + cert("client.key") +
                   " does not belong to the certificate in --tls-cert " + cert("server.crt"));
  expect_error({cert("server.crt"), cert("server.key"), cert("server.key")},
               "--tls-client-ca " + cert("server.key") + ": no PEM certificate in it");
  expect_error({cert("server.crt"), "", ""}, "--tls-cert needs --tls-key");
  expect_error({"", cert("server.key"), ""}, "--tls-key needs --tls-cert");
  expect_error({"", "", cert("ca.crt")}, "--tls-client-ca needs --tls-cert and --tls-key");
}

// A self-signed certificate that expired yesterday, and its key (the openssl 3.0 CLI cannot
// date a certificate in the past).
bool write_expired_certificate(const std::string& cert_path, const std::string& key_path) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  bool ok = key != nullptr && x != nullptr;
  if (ok) {
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3 * 86400);
    X509_gmtime_adj(X509_getm_notAfter(x), -86400);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("expired"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    ok = X509_sign(x, key, EVP_sha256()) > 0;
  }
  FILE* c = ok ? std::fopen(cert_path.c_str(), "w") : nullptr;
  FILE* k = ok ? std::fopen(key_path.c_str(), "w") : nullptr;
  ok = c != nullptr && k != nullptr && PEM_write_X509(c, x) == 1 &&
       PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  if (c != nullptr) std::fclose(c);
  if (k != nullptr) std::fclose(k);
  X509_free(x);
  EVP_PKEY_free(key);
  return ok;
}

TEST_F(TlsFilesTest, ExpiredCertificateAndReadableKeyAreWarnings) {
  const std::string cert = dir_->path() + "/expired.crt";
  const std::string key = dir_->path() + "/expired.key";
  ASSERT_TRUE(write_expired_certificate(cert, key));
  ::chmod(key.c_str(), 0644);
  auto tls = load_server_tls({cert, key, ""});
  ASSERT_TRUE(tls.ok()) << tls.status().message();
  ASSERT_EQ(tls->warnings.size(), 2u);
  EXPECT_TRUE(has(tls->warnings[0], "--tls-cert " + cert + ": the certificate expired on "))
      << tls->warnings[0];
  EXPECT_TRUE(has(tls->warnings[1], "--tls-key " + key + " may be read by other users"))
      << tls->warnings[1];
}

// ---- the counter -------------------------------------------------------------------------

TEST(AuthMetrics, FailuresAreCountedByReason) {
  ServerMetrics m;
  m.observe_auth_failure("missing");
  m.observe_auth_failure("wrong_token");
  m.observe_auth_failure("wrong_token");
  const std::string s = prometheus::TextSerializer().Serialize(m.collect_all());
  EXPECT_TRUE(has(s, R"(ampd_auth_failures_total{reason="missing"} 1)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_auth_failures_total{reason="wrong_token"} 2)")) << s;
}

}  // namespace
}  // namespace ampd::server
