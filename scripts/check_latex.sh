#!/usr/bin/env bash
# Compile LaTeX tables written by `risbench table --format latex` (or `risbench run`) with pdflatex, each
# inside two minimal documents: a one-column article (\textwidth 345 pt) and a two-column IEEE page
# (IEEEtran when installed, else an article with IEEE's 7.16 in \textwidth and 0.17 in column gap), with
# booktabs and graphicx. A table fails when it does not build or when the log reports an overfull \hbox of
# more than 1 pt (the table sticks out of the page), so CI catches a table that does not build or fit.
# Usage: scripts/check_latex.sh TABLE.tex [TABLE.tex ...]
# Needs pdflatex, booktabs and graphicx (Debian/Ubuntu: apt-get install -y texlive-latex-base
# texlive-latex-recommended).
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 TABLE.tex [TABLE.tex ...]" >&2
  exit 2
fi
if ! command -v pdflatex >/dev/null 2>&1; then
  echo "pdflatex not found (apt-get install -y texlive-latex-base texlive-latex-recommended)" >&2
  exit 3
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if kpsewhich IEEEtran.cls >/dev/null 2>&1; then
  ieee='\documentclass[journal]{IEEEtran}'
else
  ieee='\documentclass[10pt,twocolumn]{article}\usepackage[letterpaper,textwidth=7.16in,textheight=9.5in,columnsep=0.17in]{geometry}'
fi
declare -A classes=([article]='\documentclass{article}' [ieee]="$ieee")
status=0
for table in "$@"; do
  if [ ! -f "$table" ]; then
    echo "not a file: $table" >&2
    status=1
    continue
  fi
  cp "$table" "$work/table.tex"
  fits=()
  for name in article ieee; do
    cat > "$work/$name.tex" <<TEX
${classes[$name]}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs}
\usepackage{graphicx}
\begin{document}
\input{table.tex}
\end{document}
TEX
    if ! (cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error "$name.tex" >"$name.out" 2>&1); then
      echo "FAILED: $table ($name): does not build" >&2
      grep -A3 '^!' "$work/$name.log" >&2 || tail -20 "$work/$name.out" >&2
      status=1
      continue
    fi
    width=$(grep -oE 'Overfull \\hbox \([0-9.]+pt too wide\)' "$work/$name.log" | grep -oE '[0-9.]+' \
      | sort -g | tail -1 || true)
    if [ -n "$width" ] && awk -v w="$width" 'BEGIN { exit !(w > 1) }'; then
      echo "FAILED: $table ($name): overfull \\hbox, ${width} pt wider than the page" >&2
      status=1
    else
      fits+=("$name")
    fi
  done
  if [ "${#fits[@]}" -eq 2 ]; then
    echo "ok: $table (builds and fits a one-column article and a two-column IEEE page)"
  fi
done
exit $status
