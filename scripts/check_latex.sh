#!/usr/bin/env bash
# Compile LaTeX tables written by `risbench table --format latex` (or `risbench run`) with pdflatex, each
# inside a minimal document with booktabs, so that CI catches a table that does not build.
# Usage: scripts/check_latex.sh TABLE.tex [TABLE.tex ...]
# Needs pdflatex and booktabs (Debian/Ubuntu: apt-get install -y texlive-latex-base texlive-latex-recommended).
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
status=0
for table in "$@"; do
  if [ ! -f "$table" ]; then
    echo "not a file: $table" >&2
    status=1
    continue
  fi
  cp "$table" "$work/table.tex"
  cat > "$work/doc.tex" <<'TEX'
\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs}
\begin{document}
\input{table.tex}
\end{document}
TEX
  if (cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error doc.tex >build.log 2>&1); then
    echo "ok: $table"
  else
    echo "FAILED: $table" >&2
    grep -A3 '^!' "$work/build.log" >&2 || tail -20 "$work/build.log" >&2
    status=1
  fi
done
exit $status
