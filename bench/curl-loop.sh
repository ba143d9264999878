#!/usr/bin/env bash
# A per-file uploader: one curl process and one PUT .../values/KEY per file,
# the way a shell script without bulk writes publishes a tree. bench/run.sh
# times it against kvsync and wrangler.
#
# usage: curl-loop.sh LIST.tsv NAMESPACE_URL
#   LIST.tsv       lines "escaped-key TAB file TAB sidecar-or-dash"
#                  (bench/benchtool filelist writes it)
#   NAMESPACE_URL  .../client/v4/accounts/ACCOUNT/storage/kv/namespaces/NS
# The token comes from $CLOUDFLARE_API_TOKEN. A file with a sidecar is sent as
# multipart (value + metadata), any other as a raw body. The first failed
# request stops the loop with curl's exit status.
set -euo pipefail

list=$1
ns_url=$2
: "${CLOUDFLARE_API_TOKEN:?set CLOUDFLARE_API_TOKEN}"
auth="Authorization: Bearer $CLOUDFLARE_API_TOKEN"

while IFS=$'\t' read -r key path sidecar; do
	if [[ $sidecar == - ]]; then
		curl -sS -f -o /dev/null -X PUT -H "$auth" -H 'Content-Type: application/octet-stream' \
			--data-binary "@$path" "$ns_url/values/$key"
	else
		curl -sS -f -o /dev/null -X PUT -H "$auth" \
			-F "value=@$path" -F "metadata=<$sidecar" "$ns_url/values/$key"
	fi
done <"$list"
