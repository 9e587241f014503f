#!/usr/bin/env bash
# Runs every native Go fuzz target (func FuzzX(f *testing.F)) of the module,
# one after the other, each for the same duration.
#
#   tools/fuzz.sh [DURATION] [PACKAGES...]
#
#   DURATION   per target, as go test -fuzztime takes it: 30s, 5m, 1000x
#              (default: $FUZZTIME, else 30s)
#   PACKAGES   go package patterns to search (default ./...)
#
# Targets are found with `go test -list 'Fuzz.*'`, so a new one is picked up
# without touching this script. The seed corpus of each target (f.Add and
# testdata/fuzz/<Target>/) runs first; a failing input is written to that
# package's testdata/fuzz/<Target>/ — commit it with the fix, as a regression
# seed. All targets run even when one fails; the exit status is 1 if any
# failed. FUZZ_PARALLEL bounds the fuzzing workers (default GOMAXPROCS);
# FUZZ_MINIMIZETIME bounds the minimization of each new input (go's default
# is 60s, time during which a short run explores nothing: 1s suits CI).
set -uo pipefail

cd "$(dirname "$0")/.."
duration="${1:-${FUZZTIME:-30s}}"
shift || true
[ $# -gt 0 ] || set -- ./...
go="${GO:-go}"
extra=()
[ -n "${FUZZ_PARALLEL:-}" ] && extra=(-parallel "$FUZZ_PARALLEL")
[ -n "${FUZZ_MINIMIZETIME:-}" ] && extra+=(-fuzzminimizetime "$FUZZ_MINIMIZETIME")

# `go test -list` prints a package's matching test names, then "ok <pkg>".
listing="$("$go" test -list '^Fuzz' "$@")" || { echo "fuzz.sh: listing the fuzz targets failed:" >&2; echo "$listing" >&2; exit 2; }
targets=()
pending=()
while IFS= read -r line; do
	case "$line" in
	Fuzz*) pending+=("$line") ;;
	ok*)
		pkg="$(awk '{print $2}' <<<"$line")"
		for t in "${pending[@]+"${pending[@]}"}"; do targets+=("$pkg $t"); done
		pending=()
		;;
	esac
done <<<"$listing"

if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz.sh: no fuzz targets in $*" >&2
	exit 2
fi
echo "fuzz.sh: ${#targets[@]} targets, $duration each"

failed=()
for entry in "${targets[@]}"; do
	read -r pkg target <<<"$entry"
	echo "=== $target ($pkg)"
	if ! "$go" test -run '^$' -fuzz "^${target}\$" -fuzztime "$duration" "${extra[@]+"${extra[@]}"}" "$pkg"; then
		failed+=("$target ($pkg)")
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz.sh: FAILED: ${failed[*]}" >&2
	exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets passed"
