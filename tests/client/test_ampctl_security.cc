// ampctl's credentials without a server: where the token comes from (flags before the
// environment, one source of each kind), what a bad token or CA file says, and the hints
// for TLS handshake failures and refused tokens (the gRPC messages are the ones gRPC 1.51
// gives for each case, as seen by cli_tls.sh).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/connection.h"

namespace ampd::ampctl {
namespace {

namespace fs = std::filesystem;

constexpr char kToken[] = "secret-0123456789abcdef0123456789";

bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ampctl-security-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (const char* v : {"AMPD_TOKEN", "AMPD_TOKEN_FILE"}) ::unsetenv(v);
  }
  void TearDown() override {
    for (const char* v : {"AMPD_TOKEN", "AMPD_TOKEN_FILE"}) ::unsetenv(v);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& content) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << content;
    return p;
  }
  // resolve_security's exit code; what it printed on stderr in *err.
  int resolve(GlobalOptions& g, std::string* err) {
    ::testing::internal::CaptureStderr();
    const int code = resolve_security(g);
    *err = ::testing::internal::GetCapturedStderr();
    return code;
  }
  std::string dir_;
};

TEST_F(SecurityTest, TokenFileIsTrimmedAndNamedAsTheSource) {
  GlobalOptions g;
  g.token_file = write("token", std::string(kToken) + "\n");
  std::string err;
  ASSERT_EQ(resolve(g, &err), kExitOk) << err;
  EXPECT_EQ(g.token, kToken);
  EXPECT_EQ(g.token_source, "--token-file " + g.token_file);
}

TEST_F(SecurityTest, FlagsWinOverTheEnvironmentAndTwoEnvironmentSourcesAreAnError) {
  const std::string file = write("token", kToken);
  ::setenv("AMPD_TOKEN", "from-the-environment", 1);
  GlobalOptions g;
  g.token_file = file;
  std::string err;
  ASSERT_EQ(resolve(g, &err), kExitOk) << err;
  EXPECT_EQ(g.token, kToken);

  GlobalOptions from_env;
  ASSERT_EQ(resolve(from_env, &err), kExitOk) << err;
  EXPECT_EQ(from_env.token, "from-the-environment");
  EXPECT_EQ(from_env.token_source, "AMPD_TOKEN");

  ::setenv("AMPD_TOKEN_FILE", file.c_str(), 1);
  GlobalOptions both;
  EXPECT_EQ(resolve(both, &err), kExitUsage);
  EXPECT_TRUE(has(err, "both AMPD_TOKEN and AMPD_TOKEN_FILE are set")) << err;

  ::unsetenv("AMPD_TOKEN");
  GlobalOptions env_file;
  ASSERT_EQ(resolve(env_file, &err), kExitOk) << err;
  EXPECT_EQ(env_file.token, kToken);
  EXPECT_EQ(env_file.token_source, "AMPD_TOKEN_FILE " + file);
}

TEST_F(SecurityTest, BadFilesAreUsageErrorsNamingTheFlagNeverTheToken) {
  std::string err;
  GlobalOptions missing;
  missing.token_file = dir_ + "/nope";
  EXPECT_EQ(resolve(missing, &err), kExitUsage);
  EXPECT_EQ(err,
            "ampctl: --token-file " + dir_ + "/nope: cannot read: No such file or directory\n");

  GlobalOptions directory;
  directory.token_file = dir_;
  EXPECT_EQ(resolve(directory, &err), kExitUsage);
  EXPECT_TRUE(has(err, "--token-file " + dir_ + ": cannot read: it is a directory")) << err;

  GlobalOptions empty;
  empty.token_file = write("empty", "\n");
  EXPECT_EQ(resolve(empty, &err), kExitUsage);
  EXPECT_TRUE(has(err, "the token is empty")) << err;

  GlobalOptions spaced;
  spaced.token_file = write("spaced", "two words");
  EXPECT_EQ(resolve(spaced, &err), kExitUsage);
  EXPECT_TRUE(has(err, "printable ASCII characters without spaces")) << err;
  EXPECT_FALSE(has(err, "two words")) << err;

  GlobalOptions ca;
  ca.ca_cert = write("ca.crt", "not a certificate");
  EXPECT_EQ(resolve(ca, &err), kExitUsage);
  EXPECT_TRUE(has(err, "--ca-cert " + ca.ca_cert + ": not a PEM file")) << err;

  GlobalOptions half;
  half.client_key = write("client.key", "-----BEGIN PRIVATE KEY-----\n");
  EXPECT_EQ(resolve(half, &err), kExitUsage);
  EXPECT_TRUE(has(err, "--client-key needs --client-cert")) << err;
}

TEST_F(SecurityTest, AnyTlsFileOrNameTurnsTlsOn) {
  GlobalOptions g;
  g.tls_server_name = "localhost";
  std::string err;
  ASSERT_EQ(resolve(g, &err), kExitOk) << err;
  EXPECT_TRUE(g.tls);
  GlobalOptions plain;
  ASSERT_EQ(resolve(plain, &err), kExitOk) << err;
  EXPECT_FALSE(plain.tls);
  EXPECT_TRUE(plain.token_source.empty());
}

// ---- hints -------------------------------------------------------------------------------

constexpr char kServer[] = "127.0.0.1:50051";

Failure describe(const std::string& details, const SecurityHints& hints) {
  return describe_failure(grpc::Status(grpc::StatusCode::UNAVAILABLE, details), "info", kServer, 30,
                          hints);
}

SecurityHints tls(const std::string& trust = "--ca-cert ca.crt") {
  SecurityHints h;
  h.tls = true;
  h.trust = trust;
  return h;
}

const char kPrefix[] =
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: ";

TEST(TlsHints, UntrustedCertificate) {
  Failure f = describe(std::string(kPrefix) +
                           "Ssl handshake failed: SSL_ERROR_SSL: error:0A000086:SSL "
                           "routines::certificate verify failed",
                       tls());
  EXPECT_EQ(f.exit_code, kExitUnreachable);
  EXPECT_EQ(f.message,
            "cannot reach ampd at 127.0.0.1:50051 securely: the server's certificate is not "
            "signed by a CA ampctl trusts (--ca-cert ca.crt) — pass the CA that signed it with "
            "--ca-cert (AMPD_CA_CERT)");
}

TEST(TlsHints, ServerWithoutTls) {
  Failure f = describe(std::string(kPrefix) +
                           "Ssl handshake failed: SSL_ERROR_SSL: error:0A00010B:SSL "
                           "routines::wrong version number",
                       tls());
  EXPECT_EQ(f.exit_code, kExitUnreachable);
  EXPECT_TRUE(has(f.message, "the server does not speak TLS")) << f.message;
}

TEST(TlsHints, CertificateForAnotherName) {
  SecurityHints h = tls();
  h.server_name = "gpu-box.example";
  Failure f =
      describe(std::string(kPrefix) + "Peer name gpu-box.example is not in peer certificate", h);
  EXPECT_TRUE(has(f.message, "not issued for \"gpu-box.example\"")) << f.message;
  EXPECT_TRUE(has(f.message, "--tls-server-name")) << f.message;
}

TEST(TlsHints, PlaintextClientIsToldAboutTls) {
  Failure f = describe(std::string(kPrefix) + "Socket closed", SecurityHints{});
  EXPECT_EQ(f.exit_code, kExitUnreachable);
  EXPECT_TRUE(has(f.message, "the connection was closed")) << f.message;
  EXPECT_TRUE(has(f.message, "if the server uses TLS, add --tls or --ca-cert FILE")) << f.message;
  // A refused connection is not about TLS.
  f = describe(std::string(kPrefix) + "Failed to connect to remote host: Connection refused",
               SecurityHints{});
  EXPECT_FALSE(has(f.message, "TLS")) << f.message;
}

TEST(TlsHints, MutualTlsServerClosingTheConnection) {
  Failure f = describe(std::string(kPrefix) + "Socket closed", tls());
  EXPECT_TRUE(has(f.message, "pass --client-cert and --client-key")) << f.message;
  SecurityHints with_cert = tls();
  with_cert.client_cert = true;
  f = describe(std::string(kPrefix) + "Socket closed", with_cert);
  EXPECT_TRUE(has(f.message, "may have refused ampctl's --client-cert")) << f.message;
}

TEST(TokenHints, SayWhatWasSentButNotTheToken) {
  SecurityHints none;
  Failure f = describe_failure(
      grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "this server requires a bearer token"),
      "list jobs", kServer, 30, none);
  EXPECT_EQ(f.exit_code, kExitUnauthenticated);
  EXPECT_TRUE(has(f.message, "ampctl sent no token: give it with --token-file FILE")) << f.message;
  SecurityHints file;
  file.token_source = "--token-file /etc/ampd/token";
  f = describe_failure(
      grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not valid"), "list jobs",
      kServer, 30, file);
  EXPECT_TRUE(has(f.message, "ampctl sent the token from --token-file /etc/ampd/token"))
      << f.message;
}

}  // namespace
}  // namespace ampd::ampctl
