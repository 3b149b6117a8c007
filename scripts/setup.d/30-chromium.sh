#!/usr/bin/env bash
# The field app's browser tests drive Debian's Chromium with Playwright (Playwright never downloads
# a browser here); checklist PDFs are checked with poppler's pdftotext; WeasyPrint needs Pango and a font.
set -euo pipefail
need=()
for pkg in chromium poppler-utils fonts-dejavu-core libpango-1.0-0 libpangoft2-1.0-0; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
