#!/usr/bin/env bash
# The field app's browser tests drive Debian's Chromium with Playwright (Playwright never downloads
# a browser here); checklist PDFs are checked with poppler's pdftotext; WeasyPrint needs Pango and a font.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
apt_install_missing chromium poppler-utils fonts-dejavu-core libpango-1.0-0 libpangoft2-1.0-0
