#!/usr/bin/env bash
# Throwaway TLS material for the security tests, made with the openssl CLI in DIR:
#   ca.crt ca.key               a CA
#   server.crt server.key       signed by it; CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   client.crt client.key       signed by it; for mutual TLS (clientAuth)
#   other-ca.crt other-ca.key   a second CA that signed nothing here (the "wrong CA")
# Keys are EC P-256 (fast to make); certificates are valid for two days.
#   make_test_certs.sh DIR
set -euo pipefail
dir=$1
command -v openssl > /dev/null || { echo "make_test_certs: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
umask 077

new_ca() {  # NAME CN
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$2" -keyout "$1.key" -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2> /dev/null
}
new_leaf() {  # NAME CN EXTENSIONS
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.csr" 2> /dev/null
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
    -days 2 -extfile "$1.ext" -out "$1.crt" 2> /dev/null
  rm -f "$1.csr" "$1.ext"
}

new_ca ca "ampd test CA"
new_ca other-ca "ampd test other CA"
new_leaf server localhost \
  "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
new_leaf client ampd-test-client "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
chmod 644 ./*.crt
