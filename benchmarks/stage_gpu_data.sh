#!/usr/bin/env bash
# Stage the BBBC039 images the GPU check's benchmark reads (the first 50 of train and of test,
# images and masks, about 40 MB) in .bench_data/, which git ignores and the device call carries;
# check the size of what would travel and print the device tool's arguments.
#   bash benchmarks/stage_gpu_data.sh [BBBC039 folder]     (default: ../shared/data/bbbc039)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/data/bbbc039}
limit_mib=64
if [ ! -d "$src/train/images" ] || [ ! -d "$src/test/images" ]; then
    echo "No BBBC039 data in $src: pass the folder that holds train/ and test/." >&2
    exit 2
fi
if ! git check-ignore -q .bench_data/; then
    echo ".bench_data is not ignored by git here: it must be (see .gitignore)." >&2
    exit 2
fi
# the same 50 files per split that benchmarks/run.py reads: the first by name (code point order)
tmp=.bench_data.partial
rm -rf "$tmp"
for split in train test; do
    mkdir -p "$tmp/$split/images" "$tmp/$split/masks"
    find "$src/$split/images" -maxdepth 1 -name '*.tif' -printf '%f\n' | LC_ALL=C sort | awk 'NR <= 50' |
        while read -r name; do
            cp "$src/$split/images/$name" "$tmp/$split/images/"
            cp "$src/$split/masks/$name" "$tmp/$split/masks/"
        done
done
rm -rf .bench_data
mv "$tmp" .bench_data
# what travels: tracked and untracked-not-ignored files, and the carried folder
tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | awk 'END {print $1}')
data=$(du -sb .bench_data | cut -f1)
total_mib=$(( (tree + data) / 1048576 ))
echo "Staged $(find .bench_data -name '*.tif' | wc -l) files, $(( data / 1048576 )) MiB, in .bench_data;" \
    "with the working tree $total_mib MiB travel (limit $limit_mib MiB)."
if [ "$total_mib" -ge "$limit_mib" ]; then
    echo "Too large for the device call: remove untracked files or stage fewer images." >&2
    exit 1
fi
cat <<'ARGS'
The device call (the run tool), from this repository's root:
  command:   bash benchmarks/gpu_check.sh
  carry:     [".bench_data"]
  timeout_s: 480
  kind:      leave it out (an H100; an H200 does as well, the results name the device)
Its files come back read-only: copy them into benchmarks/results/gpu/check/ and commit them.
ARGS
