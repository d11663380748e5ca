#!/usr/bin/env bash
# Builds the Go client offline, from Debian's packages (see README.md):
#   bash build.sh          generate the stubs from the .proto, build the package and bin/recommend
#   bash build.sh test     ... then run the tests against $RECSERVE_TARGET (a live server)
# Go runs in GOPATH mode on Debian's library sources (/usr/share/gocode): no module
# proxy, no network. Outputs: recservepb/ (generated stubs) and build/, both ignored by git.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
proto_root=${RECSERVE_PROTO_ROOT:-$repo/proto}
gocode=${RECSERVE_GOCODE:-/usr/share/gocode}

missing=()
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# registry.go: github.com/golang/protobuf >= 1.4 (package golang-github-golang-protobuf-1-5-dev);
# grpc's codec goes through it, and the 1.3 one panics on the messages protoc-gen-go makes.
for file in google.golang.org/grpc/clientconn.go google.golang.org/protobuf/proto/proto.go \
            github.com/golang/protobuf/proto/registry.go; do
  [ -f "$gocode/src/$file" ] || missing+=("$gocode/src/$file")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build.sh: missing ${missing[*]}; install them with: apt-get install --no-install-recommends" \
       "golang-go golang-google-grpc-dev golang-google-protobuf-dev" \
       "golang-github-golang-protobuf-1-5-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc" >&2
  exit 3
fi

# GOPATH layout: build/gopath/src/recserve -> this folder, so it imports as "recserve".
mkdir -p "$here/build/gopath/src" "$here/build/bin"
ln -sfn ../../.. "$here/build/gopath/src/recserve"
export GO111MODULE=off GOPROXY=off GOFLAGS=${GOFLAGS:--p=2}
export GOPATH="$here/build/gopath:$gocode"
export GOCACHE=${GOCACHE:-$here/build/gocache}

# Stubs, from the contract of this checkout (the .proto has no go_package: M maps it).
map=Mrecserve/v1/recserve.proto=recserve/recservepb
rm -rf "$here/build/gen" "$here/recservepb"
mkdir -p "$here/build/gen"
protoc -I "$proto_root" \
  --go_out="$here/build/gen" --go_opt="$map" \
  --go-grpc_out="$here/build/gen" --go-grpc_opt="$map" \
  recserve/v1/recserve.proto
mv "$here/build/gen/recserve/recservepb" "$here/recservepb"

go build recserve recserve/recservepb
go build -o "$here/build/bin/recommend" recserve/cmd/recommend
echo "build.sh: built $here/build/bin/recommend ($(go version | cut -d' ' -f3), $(protoc --version))"

if [ "${1:-}" = test ]; then
  if [ -z "${RECSERVE_TARGET:-}" ]; then
    echo "build.sh: set RECSERVE_TARGET to a running server, e.g. 127.0.0.1:50051" >&2
    exit 2
  fi
  RECSERVE_EXAMPLE="$here/build/bin/recommend" go test -count=1 -v recserve
fi
