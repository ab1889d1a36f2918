#!/usr/bin/env bash
# Installs the Go programs the tests and the local stack run, built from the Go module proxy at
# pinned versions, into one directory outside the clone (so every clone on the machine reuses
# them), and prints that directory's bin/ on stdout.
#
#   tools.sh [helm|promtool|jaeger ...]   the named tools (default: all); each is built only once
#
#   helm      helm.sh/helm/v4 v4.3.2: lints and renders deploy/kubernetes
#   promtool  github.com/prometheus/prometheus v0.316.0 (Prometheus 3.x): checks and unit-tests
#             deploy/observability's rules
#   jaeger    github.com/jaegertracing/jaeger v1.75.0: the trace collector of the local stack
#
# Settings (environment): AUTOGLM_TOOLS  where they go (default: ~/.cache/open-autoglm/tools)
# A cold build of all three takes several minutes on 2 cores; it says which one it is building.
set -euo pipefail

declare -A modules=(
  [helm]=helm.sh/helm/v4/cmd/helm@v4.3.2
  [promtool]=github.com/prometheus/prometheus/cmd/promtool@v0.316.0
  [jaeger]=github.com/jaegertracing/jaeger/cmd/jaeger@v1.75.0
)
# Modules whose go.mod has replace directives: `go install pkg@version` refuses them, so they are
# downloaded and built as the main module (their replace directives then apply, as in a release).
declare -A main_module=(
  [jaeger]=github.com/jaegertracing/jaeger
)
root=${AUTOGLM_TOOLS:-$HOME/.cache/open-autoglm/tools}
bin=$root/bin
mkdir -p "$bin"

names=("$@")
((${#names[@]})) || names=(helm promtool jaeger)
for name in "${names[@]}"; do
  module=${modules[$name]:-}
  [[ -n $module ]] || { echo "tools: no tool named $name (helm, promtool, jaeger)" >&2; exit 2; }
  # A stamp per version, so a version change rebuilds.
  stamp=$bin/.$name-${module##*@}
  [[ -x $bin/$name && -e $stamp ]] && continue
  command -v go >/dev/null || { echo "tools: go is missing; install Go 1.26 (https://go.dev/dl)" >&2; exit 1; }
  echo "tools: building $module (a few minutes on 2 cores, once per machine)" >&2
  started=$SECONDS
  if [[ -n ${main_module[$name]:-} ]]; then
    root_module=${main_module[$name]}
    version=${module##*@}
    dir=$(go mod download -json "$root_module@$version" | jq -r .Dir)
    package=./${module%@*}
    package=.${package#./"$root_module"}
    (cd "$dir" && GOBIN=$bin GOFLAGS=-buildvcs=false go install "$package") >&2
  else
    GOBIN=$bin go install "$module" >&2
  fi
  touch "$stamp"
  echo "tools: $name built in $((SECONDS - started))s" >&2
done
echo "$bin"
