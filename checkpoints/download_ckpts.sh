#!/usr/bin/env bash
# Download the official SAM2.1 checkpoints (Meta) into this folder.
#   bash checkpoints/download_ckpts.sh            # tiny, small, base_plus, large
#   bash checkpoints/download_ckpts.sh tiny large # only these
# A file already present is kept. Each download goes to a temporary name, then is renamed.
set -euo pipefail
cd "$(dirname "$0")"
BASE_URL="https://dl.fbaipublicfiles.com/segment_anything_2/092824"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(tiny small base_plus large)
for size in "${sizes[@]}"; do
  case "$size" in
    tiny|small|base_plus|large) file="sam2.1_hiera_${size}.pt" ;;
    *) echo "error: unknown size '$size' (download_ckpts.sh): use tiny, small, base_plus or large" >&2; exit 2 ;;
  esac
  if [ -s "$file" ]; then echo "$file: present"; continue; fi
  echo "$file: downloading from $BASE_URL/$file"
  if command -v curl >/dev/null; then fetch=(curl -fL --retry 2 --connect-timeout 20 -o "$file.part" "$BASE_URL/$file")
  else fetch=(wget -q -T 20 -O "$file.part" "$BASE_URL/$file"); fi
  if ! "${fetch[@]}" 2>/dev/null; then
    rm -f "$file.part"
    echo "error: cannot download $file (no internet?): fetch $BASE_URL/$file on a connected machine and put it in checkpoints/" >&2
    exit 1
  fi
  mv "$file.part" "$file"
done
