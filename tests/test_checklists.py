"""Printable checklists: one per location, HTML and a real PDF (WeasyPrint), translated, with a QR code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bigbang.checklists import build_checklist, item_ids, languages, translator
from bigbang.store.field import PROBLEM_CATEGORIES, Actor, FieldStore
from bigbang.inventory import load_inventory
from bigbang.plan import STEP_KINDS, build_plan
from bigbang.report import templates_dir
from bigbang.session import RunOptions, RunSession
from tests.conftest import DEMO


def _pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout


def _pdf_pages(path: Path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def _qr_codes_in(pdf: Path, scratch: Path) -> list[str]:
    """Every QR code printed in the PDF, decoded from its images (zxing-cpp, as a phone's camera would)."""
    import zxingcpp
    from PIL import Image

    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdfimages", "-png", str(pdf), str(scratch / "img")], check=True)
    found = []
    for png in sorted(scratch.glob("img-*.png")):
        found += [code.text for code in zxingcpp.read_barcodes(Image.open(png).convert("L"))
                  if code.format == zxingcpp.BarcodeFormat.QRCode]
    return found


def test_checklists_command_writes_html_and_pdf_per_location(bigbang, tmp_path):
    out = tmp_path / "print"
    r = bigbang("checklists", DEMO, "--out", out, "--lang", "da", "--url", "https://field.example.dk")
    assert r.returncode == 0, r.stderr
    inventory = load_inventory(DEMO)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html"] + [f"{loc.id}.{ext}" for loc in inventory.locations for ext in ("html", "pdf")])

    for loc in inventory.locations:
        pdf = out / f"{loc.id}.pdf"
        assert pdf.read_bytes().startswith(b"%PDF-")
        assert _pdf_pages(pdf) >= 2
        text = _pdf_text(pdf)
        flat = re.sub(r"\s+", "", text)
        assert f"Tjekliste: {loc.id} – {loc.name}" in text
        assert loc.address in text
        for contact in loc.contacts:
            assert contact.name in text
        for device in loc.devices:  # old -> new: hostname, serial, MAC; the tick boxes' texts
            assert device.hostname in text and device.mac in text
            if device.serial:
                assert device.serial in text
        assert text.count("Strøm, netværk og sk") == len(loc.devices)
        assert "Afslutning" in text and "Underskrift" in text
        assert f"https://field.example.dk/l/{loc.id}" in flat  # the QR code's address, printed beside it
        for device in loc.devices:  # each desk's sticker: the end user's report form, its address beside it
            assert f"https://field.example.dk/r/{device.hostname}" in flat
        images = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True).stdout
        assert len(images.strip().splitlines()) == 2 + 1 + len(loc.devices)  # header, rule, QR codes
        html = (out / f"{loc.id}.html").read_text()
        assert "data:image/png;base64," in html and "scrypt$" not in html

    # What a phone reads off the paper: the location's page for technicians, and one report form per desk.
    loc = inventory.location_by_id["HST-027"]
    assert sorted(_qr_codes_in(out / "HST-027.pdf", tmp_path / "qr")) == sorted(
        ["https://field.example.dk/l/HST-027"] + [f"https://field.example.dk/r/{d.hostname}" for d in loc.devices])

    critical = _pdf_text(out / "HST-014.pdf")
    assert "Åbent døgnet rundt (24/7)" in critical and "Kritisk lokation" in critical
    assert "Residents' wing B is quiet 22:00-06:00" in critical  # the location's own note, as a risk
    windows = _pdf_text(out / "HST-001.pdf")
    assert "fre 17:00–23:59" in windows and "lør, søn 07:00–22:00" in windows
    assert "Kun adgang inden for tidsrummene ovenfor" in windows


def test_checklists_in_english_and_a_clear_error_for_an_unknown_language(bigbang, tmp_path):
    r = bigbang("checklists", DEMO, "--out", tmp_path / "en", "--location", "HST-027", "--no-pdf")
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "en" / "HST-027.html").read_text()
    assert "Checklist: HST-027" in html and "Scan or type the serial number" in html
    assert "qr" not in html.lower().split("<style>")[0]  # no base URL given: no QR code
    r = bigbang("checklists", DEMO, "--out", tmp_path / "xx", "--lang", "xx")
    assert r.returncode == 1 and "no translation 'xx'" in r.stderr and "Traceback" not in r.stderr
    r = bigbang("checklists", DEMO, "--out", tmp_path / "yy", "--location", "HST-999")
    assert r.returncode == 1 and "unknown location HST-999" in r.stderr


def test_a_printout_of_a_run_shows_what_is_checked_already(tmp_path):
    session = RunSession.start(DEMO, RunOptions(mode="rehearsal"), ledger_url=f"sqlite:///{tmp_path / 'l.db'}")
    store = FieldStore(session.ledger)
    store.set_check(session.run_id, "HST-027", "nor-ws-101.serial", True, Actor("aha", "technician", "test"),
                    "print-key-0001", value="PF4C2701")
    checklist = build_checklist(session.inventory, session.plan, "HST-027", ledger=session.ledger,
                                run_id=session.run_id)
    item = checklist.item("nor-ws-101.serial")
    assert item.checked and item.value == "PF4C2701" and not item.mismatch and item.by == "aha"
    assert checklist.checked_count == 1
    assert [i.id for i in checklist.items] == item_ids(session.inventory.location_by_id["HST-027"])
    session.close()


def _keys(lang: str) -> set[str]:
    def flatten(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return set(flatten(yaml.safe_load((templates_dir() / "i18n" / f"{lang}.yaml").read_text(encoding="utf-8"))))


def test_translations_cover_the_templates():
    assert {"en", "da", "sv", "nb", "nn"} <= set(languages())
    english = _keys("en")
    for lang in ("da", "sv", "nb", "nn"):  # complete: no English leaks into a Danish, Swedish or Norwegian page
        assert _keys(lang) == english, (f"{lang} lacks {sorted(english - _keys(lang))}; "
                                        f"has extra {sorted(_keys(lang) - english)}")
    used = set()
    for template in list(templates_dir().glob("checklist*.j2")) + list((templates_dir() / "web").glob("*.j2")):
        text = template.read_text()
        used |= set(re.findall(r"\bt\('([a-z_.]+)'", text))
        used |= {f"{k}.{form}" for k in re.findall(r"\bt_n\('([a-z_.]+)'", text) for form in ("one", "other")}
    literal = {k for k in used if not k.endswith(".")}  # 'status.' ~ value: the families are checked below
    assert literal and literal <= english, f"templates use keys English lacks: {literal - english}"
    families = ({f"category.{c}" for c in PROBLEM_CATEGORIES}
                | {f"step.{k}" for k, kind in STEP_KINDS.items() if kind.target in ("workstation", "thin_client")}
                | {f"status.{s}" for s in ("planned", "running", "in_progress", "awaiting_signoff", "signed_off",
                                           "succeeded", "completed_with_failures", "failed", "skipped", "halted",
                                           "blocked")})
    assert families <= english, f"missing: {families - english}"
    t = translator("da")
    assert t("schedule_place", n=3) == "Nr. 3 i teamets plan"
    assert translator("sv")("web.board") == "Driftstavla"
    assert translator("nb")("web.n_items_unticked.other", n=3) == "3 punkter ikke avkrysset"
    assert translator("nn")("web.n_items_unticked.other", n=3) == "3 punkt ikkje kryssa av"


def test_nynorsk_is_its_own_language_and_the_inventory_may_choose_it(tmp_path):
    import shutil

    from bigbang.inventory.loader import InventoryError
    from bigbang.web.app import inventory_language

    nb, nn = translator("nb"), translator("nn")
    assert nn("lang_name") == "Nynorsk"
    # written in nynorsk, not bokmål with another code
    assert (nn("web.no_run"), nn("error.home"), nn("web.text")) == (
        "Inga køyring har byrja enno; du kan lese sjekklistene, men ikkje krysse av.", "Til framsida",
        "Kva er gale?")
    assert sum(nn(key) != nb(key) for key in _keys("nn")) > len(_keys("nn")) / 2

    inventory = tmp_path / "inventory"
    shutil.copytree(DEMO, inventory)
    (inventory / "zz-language.yaml").write_text("rollout:\n  language: nn\n")
    assert inventory_language(load_inventory(inventory)) == "nn"
    (inventory / "zz-language.yaml").write_text("rollout:\n  language: nx\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(inventory)
    assert [str(p) for p in info.value.problems] == [
        f"{inventory / 'zz-language.yaml'}:2: rollout.language: unknown language 'nx' (known: da, en, nb, nn, sv)"]


def test_every_location_has_a_checklist_item_per_device_task():
    inventory = load_inventory(DEMO)
    plan = build_plan(inventory)
    for loc in inventory.locations:
        checklist = build_checklist(inventory, plan, loc.id)
        assert [d.hostname for d in checklist.devices] == [d.hostname for d in loc.devices]
        assert len(checklist.items) == 2 + 4 * len(loc.workstations) + 3 * len(loc.thin_clients)
        assert checklist.status == "planned" and checklist.url is None
        assert all(d.report_url is None for d in checklist.devices)  # no address known: no stickers


def test_the_public_address_comes_from_the_inventory_when_no_url_is_given(bigbang, bb_env, tmp_path):
    """`rollout.field_url` sets the QR codes' address; $BIGBANG_FIELD_URL and --url win over it."""
    import shutil

    inventory = tmp_path / "inventory"
    shutil.copytree(DEMO, inventory)
    (inventory / "zz-url.yaml").write_text("rollout:\n  field_url: https://support.example.dk/\n")
    plan = build_plan(load_inventory(inventory))
    checklist = build_checklist(load_inventory(inventory), plan, "HST-027", base_url="https://support.example.dk/")
    assert checklist.devices[0].report_url == f"https://support.example.dk/r/{checklist.devices[0].hostname}"

    r = bigbang("checklists", inventory, "--out", tmp_path / "inv", "--location", "HST-027", "--no-pdf")
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "inv" / "HST-027.html").read_text()
    assert "https://support.example.dk/l/HST-027" in html
    assert f'id="sticker-{checklist.devices[0].hostname}"' in html
    assert html.count("https://support.example.dk/r/") == len(checklist.devices)  # printed beside each code

    r = bigbang("checklists", inventory, "--out", tmp_path / "flag", "--location", "HST-027", "--no-pdf",
                "--url", "https://field.example.dk")
    html = (tmp_path / "flag" / "HST-027.html").read_text()
    assert "https://field.example.dk/r/" in html and "support.example.dk" not in html
    r = bigbang("checklists", inventory, "--out", tmp_path / "env", "--location", "HST-027", "--no-pdf",
                env={**bb_env, "BIGBANG_FIELD_URL": "https://env.example.dk"})
    html = (tmp_path / "env" / "HST-027.html").read_text()
    assert "https://env.example.dk/r/" in html and "support.example.dk" not in html
