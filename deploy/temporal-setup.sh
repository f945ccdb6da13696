#!/bin/sh
# Prepare a Temporal cluster for OpenDub: wait for the frontend, make sure the namespace
# exists, and register the custom search attributes the DubbingWorkflow upserts.
# Idempotent: safe to run on every deploy.
#
#   temporal-setup.sh NAME=Type [NAME=Type ...]
#
# The arguments must match dubcore.contracts.SEARCH_ATTRIBUTES; print them with
#   python -c "from dubcore.contracts import SEARCH_ATTRIBUTES as S; print(*(f'{k}={v}' for k, v in S.items()))"
# A workflow that upserts an attribute the namespace does not know fails its workflow task
# over and over, so jobs stall until this has run.
#
# Environment: TEMPORAL_ADDRESS (host:port, read by the temporal CLI), NAMESPACE (default
# "default"), NAMESPACE_RETENTION (used only when the namespace has to be created here;
# default 720h), SETUP_ATTEMPTS and SETUP_SLEEP_S (retry budget while the server starts).
# Needs only a POSIX shell and the `temporal` CLI (both in temporalio/admin-tools).
set -eu

NAMESPACE=${NAMESPACE:-default}
NAMESPACE_RETENTION=${NAMESPACE_RETENTION:-720h}
ATTEMPTS=${SETUP_ATTEMPTS:-60}
SLEEP_S=${SETUP_SLEEP_S:-2}

if [ "$#" -eq 0 ]; then
  echo "usage: $0 NAME=Type [NAME=Type ...]" >&2
  exit 2
fi

# retry DESCRIPTION COMMAND...: run COMMAND until it succeeds or the attempts run out.
retry() {
  what=$1
  shift
  n=1
  until "$@"; do
    if [ "$n" -ge "$ATTEMPTS" ]; then
      echo "giving up: $what (after $ATTEMPTS attempts)" >&2
      return 1
    fi
    echo "waiting: $what (attempt $n/$ATTEMPTS)"
    n=$((n + 1))
    sleep "$SLEEP_S"
  done
}

server_serving() {
  temporal operator cluster health 2>/dev/null | grep -q SERVING
}

namespace_ready() {
  if temporal operator namespace describe -n "$NAMESPACE" >/dev/null 2>&1; then
    return 0
  fi
  # Missing: create it (a server started without auto-setup has none). If another setup
  # job creates it at the same moment, this fails and the next describe succeeds.
  temporal operator namespace create -n "$NAMESPACE" --retention "$NAMESPACE_RETENTION" \
    >/dev/null 2>&1 && echo "created namespace $NAMESPACE (retention $NAMESPACE_RETENTION)"
  temporal operator namespace describe -n "$NAMESPACE" >/dev/null 2>&1
}

# has_attribute NAME: the namespace lists NAME (the JSON maps names to their types).
has_attribute() {
  temporal operator search-attribute list -n "$NAMESPACE" -o json 2>/dev/null \
    | grep -q "\"$1\""
}

# registered_type NAME: e.g. INDEXED_VALUE_TYPE_KEYWORD, or nothing if not listed.
registered_type() {
  temporal operator search-attribute list -n "$NAMESPACE" -o json 2>/dev/null \
    | sed -n "s/.*\"$1\": *\"\(INDEXED_VALUE_TYPE_[A-Z_]*\)\".*/\1/p" | head -n 1
}

# ensure_attribute NAME TYPE: create it unless it is there with the same type. The same
# name with another type cannot be fixed from here: stop instead of retrying.
ensure_attribute() {
  want=INDEXED_VALUE_TYPE_$(echo "$2" | sed 's/KeywordList/Keyword_List/' | tr '[:lower:]' '[:upper:]')
  have=$(registered_type "$1")
  if [ "$have" = "$want" ]; then
    echo "search attribute $1 ($2) already registered"
    return 0
  fi
  if [ -n "$have" ]; then
    echo "search attribute $1 exists as $have, not $2: fix the cluster by hand" >&2
    exit 1
  fi
  temporal operator search-attribute create -n "$NAMESPACE" --name "$1" --type "$2"
}

echo "Temporal at ${TEMPORAL_ADDRESS:-127.0.0.1:7233}, namespace $NAMESPACE"
retry "Temporal frontend to report SERVING" server_serving
retry "namespace $NAMESPACE" namespace_ready

for spec in "$@"; do
  name=${spec%%=*}
  type=${spec#*=}
  if [ -z "$name" ] || [ "$name" = "$spec" ] || [ -z "$type" ]; then
    echo "bad argument '$spec': expected NAME=Type" >&2
    exit 2
  fi
  retry "search attribute $name ($type)" ensure_attribute "$name" "$type"
done

# The frontend caches search attributes; verify they are visible before declaring success.
for spec in "$@"; do
  retry "search attribute ${spec%%=*} to be listed" has_attribute "${spec%%=*}"
done
echo "namespace $NAMESPACE has search attributes: $*"
