#!/usr/bin/env bash
# Prints the URI of the apt source this machine already uses for the Debian suite named in $1
# (e.g. bookworm), read from /etc/apt/sources.list (one-line format) and
# /etc/apt/sources.list.d/*.sources (deb822) or *.list. Prints nothing if there is none.
set -euo pipefail
suite=${1:?usage: apt-mirror.sh <suite>}
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  awk -v s="$suite" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1)==s) { print $i; exit } }' "$f"
done | head -n1 | grep . && exit 0
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  # deb822 stanzas are separated by blank lines; pick a "deb" stanza whose Suites list the suite.
  awk -v s="$suite" 'BEGIN { RS=""; FS="\n" }
    { types=""; uris=""; suites="";
      for (i=1;i<=NF;i++) { if ($i ~ /^Types:/) types=$i; if ($i ~ /^URIs:/) uris=$i; if ($i ~ /^Suites:/) suites=$i }
      if (types ~ /[ \t]deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" s "[ \t]")) { sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f"
done | head -n1
