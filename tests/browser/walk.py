"""Walks the Guide through the venue's Settings → Webhooks page in a real browser (Debian's
Chromium, driven by Playwright), as a venue admin would, finding every control by its
accessible name. Run by tests/portal.rs, which gives it the portal links and the receivers and
checks what the receivers got.

    walk.py <input.json>   input: {"url", "expired_url", "signed_receiver", "bearer_receiver",
                                   "failing_receiver", "busy_receiver", "heal_file", "publish_file", "own_token",
                                   "header_value", "shots"}

Prints one JSON object: what the page showed (the secret and token copied from it, the test
outcome, …). Any step that fails raises, and the process exits non-zero with the reason.
"""

import json
import os
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
TIMEOUT_MS = 15_000
# axe-core, installed with the npm verifiers for this test only (never served by the page).
AXE = os.path.join(os.path.dirname(__file__), "..", "verifiers", "node_modules", "axe-core", "axe.min.js")


def accessibility(page, screen, result):
    """axe-core's serious and critical violations on this screen, by rule, into `result`."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=AXE)
    found = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"""
    )
    result.setdefault("accessibility", {})[screen] = found


def shot(page, shots, name):
    if shots:
        page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def tab_to(page, text, most=150):
    """Presses Tab until the focused element reads `text` (at most `most` times)."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == text:
            return
    raise AssertionError(f"no focusable {text!r} within {most} Tab presses")


def copy_shown_once(page, title):
    """The value a rotation shows once, copied with its "Copy" button; then "Done"."""
    once = page.get_by_role("dialog", name=title)
    expect(once).to_be_visible()
    once.get_by_role("button", name="Copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    once.get_by_role("button", name="Done").click()
    return copied


def create(page, url, mode, result, shots=None):
    """The Add endpoint flow with the mouse; returns what the page showed once."""
    page.get_by_role("button", name="Add endpoint").click()
    dialog = page.get_by_role("dialog", name="Add endpoint")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Destination URL").fill(url)
    dialog.get_by_label("All events").uncheck()
    dialog.get_by_label("order.created", exact=True).check()
    dialog.get_by_label("webhook.test", exact=True).check()
    if mode == "bearer":
        dialog.get_by_label("Bearer token").check()
        dialog.get_by_label("Generate a token for me").check()
    elif mode.startswith("bearer:"):
        dialog.get_by_label("Bearer token").check()
        dialog.get_by_label("Paste my own token").check()
        dialog.get_by_label("Your token").fill(mode.split(":", 1)[1])
    else:
        dialog.get_by_label("Signed secret (recommended)").check()
    if shots:
        shot(page, shots, "add-endpoint")
        accessibility(page, "add-endpoint", result)
    dialog.get_by_role("button", name="Create").click()
    once = page.get_by_role("dialog", name="Endpoint created")
    expect(once).to_be_visible()
    expect(once.get_by_text("It will not be shown again")).to_be_visible()
    once.get_by_role("button", name="Copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    if shots:
        shot(page, shots, "secret-shown-once")
        accessibility(page, "secret-shown-once", result)
    once.get_by_role("button", name="Done").click()
    expect(page.get_by_role("button", name="Send test")).to_be_visible()
    return copied


def main():
    spec = json.load(open(sys.argv[1]))
    shots = spec.get("shots")
    result = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        context = browser.new_context(
            permissions=["clipboard-read", "clipboard-write"],
            viewport={"width": 1100, "height": 800},
            # Only so that the test can add axe-core to the page; the page's own policy is
            # checked by tests/management.rs and the api's unit tests.
            bypass_csp=True,
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            walk(spec, shots, context, page, errors, result)
        except Exception:
            # What the page showed when a step failed, for the test's message.
            print("page text at the failure:\n" + page.locator("body").inner_text(), file=sys.stderr)
            print("page errors: " + json.dumps(errors), file=sys.stderr)
            raise
        browser.close()
    print(json.dumps(result))


def walk(spec, shots, context, page, errors, result):
    """The Guide's steps, in order; fills `result` with what the page showed."""

    page.goto(spec["url"])
    expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    result["token_left_the_address_bar"] = "token=" not in page.url
    shot(page, shots, "endpoints-empty")
    accessibility(page, "endpoints", result)

    # A signed endpoint: the secret is copied from the page.
    result["secret"] = create(page, spec["signed_receiver"], "signed", result, shots)
    result["secret_gone_after_closing"] = result["secret"] not in page.content()
    page.get_by_role("button", name="Send test").click()
    outcome = page.get_by_role("status").filter(has_text="Delivered")
    expect(outcome).to_be_visible()
    result["test_outcome"] = outcome.inner_text()
    shot(page, shots, "endpoint-send-test")
    accessibility(page, "endpoint", result)
    page.get_by_role("button", name="View delivery history").click()
    expect(page.get_by_role("heading", name="Delivery history")).to_be_visible()
    result["history_rows"] = page.locator("tbody tr").count()
    shot(page, shots, "history")
    accessibility(page, "history", result)
    page.get_by_role("link", name="← Endpoint").click()

    # Custom headers: a reserved name is refused at its field; an X-Api-Key is saved, shown
    # as a hint only, and sent with the next request.
    page.get_by_role("button", name="Edit").click()
    edit = page.get_by_role("dialog", name="Edit endpoint")
    edit.get_by_label("Add or replace headers").fill("Authorization: Bearer mine")
    edit.get_by_role("button", name="Save").click()
    header_error = edit.locator("[data-field=headers] .field-error")
    expect(header_error).to_be_visible()
    result["header_error"] = header_error.inner_text()
    edit.get_by_label("Add or replace headers").fill("X-Api-Key: " + spec["header_value"])
    edit.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    result["headers_shown"] = page.locator("table").inner_text()
    # The endpoint's health over the last 24 hours (its one Send test so far).
    result["health"] = page.get_by_label("Last 24 hours").inner_text()
    result["header_value_on_page"] = spec["header_value"] in page.content()
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status").filter(has_text="Delivered")).to_be_visible()
    page.get_by_role("link", name="← All endpoints").click()

    # A bearer endpoint with a generated token.
    result["token"] = create(page, spec["bearer_receiver"], "bearer", result)
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status").filter(has_text="Delivered")).to_be_visible()
    # Rotate token: a new generated token, shown once; the next request carries it.
    page.get_by_role("button", name="Rotate token").click()
    expect(page.get_by_text("The old token stops working as soon as you rotate")).to_be_visible()
    page.get_by_role("button", name="Rotate", exact=True).click()
    result["rotated_token"] = copy_shown_once(page, "Token rotated")
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status").filter(has_text="Delivered")).to_be_visible()
    page.get_by_role("link", name="← All endpoints").click()

    # A bearer endpoint with the venue's own token, pasted.
    result["pasted_token"] = create(page, spec["bearer_receiver"], "bearer:" + spec["own_token"], result)
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status").filter(has_text="Delivered")).to_be_visible()
    page.get_by_role("link", name="← All endpoints").click()

    # Paging through a busy endpoint's history (the runner delivered 23 events to it):
    # newest first, 20 a page; Next page, then Previous page back to the same first page.
    page.get_by_role("link", name=spec["busy_receiver"], exact=True).click()
    page.get_by_role("button", name="View delivery history").click()
    expect(page.get_by_text("Page 1")).to_be_visible()
    rows = page.locator("tbody tr")
    first_page = rows.all_inner_texts()
    result["previous_on_first_page"] = page.get_by_role("button", name="Previous page").count()
    page.get_by_role("button", name="Next page").click()
    expect(page.get_by_text("Page 2")).to_be_visible()
    second_page = rows.all_inner_texts()
    result["next_on_last_page"] = page.get_by_role("button", name="Next page").count()
    shot(page, shots, "history-page-2")
    page.get_by_role("button", name="Previous page").click()
    expect(page.get_by_text("Page 1")).to_be_visible()
    result["pages"] = [first_page, second_page, rows.all_inner_texts()]
    page.get_by_role("link", name="← Endpoint").click()
    page.get_by_role("link", name="← All endpoints").click()

    # Keyboard only: the create flow without the mouse.
    tab_to(page, "Add endpoint")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Add endpoint")
    expect(dialog).to_be_visible()
    page.keyboard.type(spec["signed_receiver"])
    tab_to(page, "Create")
    page.keyboard.press("Enter")
    once = page.get_by_role("dialog", name="Endpoint created")
    expect(once).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Send test")).to_be_visible()
    result["keyboard_created"] = True

    # The receiver fails: the failure and its hint are in history; Retry once it is back.
    # (The runner makes the signed receiver answer 503 to bodies with "retry-me".)
    page.get_by_role("link", name="← All endpoints").click()
    page.get_by_role("link", name=spec["failing_receiver"], exact=True).click()
    page.get_by_role("button", name="Send test").click()
    failed = page.get_by_role("status").filter(has_text="Failed")
    expect(failed).to_be_visible()
    result["failure_outcome"] = failed.inner_text()
    page.get_by_role("button", name="View delivery history").click()
    page.get_by_label("Status", exact=True).select_option("failed")
    expect(page.get_by_role("link", name="failed").first).to_be_visible()
    shot(page, shots, "history-failed")
    # The event-type filter, then Replay failed (the receiver still fails: one more attempt).
    page.get_by_label("Event type", exact=True).select_option("order.paid")
    expect(page.get_by_text("No deliveries.")).to_be_visible()
    page.get_by_label("Event type", exact=True).select_option("webhook.test")
    expect(page.get_by_role("link", name="failed").first).to_be_visible()
    page.get_by_role("button", name="Replay failed").click()
    replayed = page.get_by_role("status").filter(has_text="(done)")
    expect(replayed).to_be_visible()
    result["replay_outcome"] = replayed.inner_text()
    # The replay's attempt runs in the background: open the delivery until it shows.
    for _ in range(30):
        page.get_by_role("link", name="failed").first.click()
        expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
        if page.locator("tbody tr").count() >= 2:
            break
        page.wait_for_timeout(500)
        page.get_by_role("link", name="← Delivery history").click()
    result["attempt_row"] = page.locator("tbody tr").first.inner_text()
    shot(page, shots, "delivery-attempts")
    accessibility(page, "delivery", result)
    with open(spec["heal_file"], "w") as heal:
        heal.write("healed")
    # The runner answers by a file beside it once the receiver answers 200 again.
    done = os.path.splitext(spec["heal_file"])[0] + ".done"
    for _ in range(200):
        if os.path.exists(done):
            break
        page.wait_for_timeout(50)
    else:
        raise AssertionError("the runner did not heal the receiver within 10 s")
    page.get_by_role("button", name="Retry").click()
    healed = page.get_by_role("status").filter(has_text="Delivered")
    expect(healed).to_be_visible()
    result["retry_outcome"] = healed.inner_text()
    page.get_by_role("link", name="← Delivery history").click()
    page.get_by_role("link", name="← Endpoint").click()

    # Rotate: the new secret is shown once the same way.
    page.get_by_role("button", name="Rotate secret").click()
    page.get_by_label("Keep the old one working for").select_option("0")
    page.get_by_role("button", name="Rotate", exact=True).click()
    result["rotated_secret"] = copy_shown_once(page, "Secret rotated")

    # Edit the payload format and see the preview.
    page.get_by_role("button", name="Edit").click()
    edit = page.get_by_role("dialog", name="Edit endpoint")
    edit.get_by_label("Preview for", exact=True).select_option("order.paid")
    preview = edit.get_by_label("Preview", exact=True)
    # A template that does not apply: its error, next to it.
    edit.get_by_label("Payload format").select_option("template")
    edit.get_by_label("Template").fill("data.no_such_field")
    template_error = edit.locator("[data-field=template] .field-error")
    expect(template_error).to_be_visible()
    result["template_error"] = template_error.inner_text()
    edit.get_by_label("Template").fill("{text: join(' ', ['Paid:', data.order_id])}")
    expect(preview).to_contain_text("Paid:")
    result["template_preview"] = preview.inner_text()
    edit.get_by_label("Payload format").select_option("data")
    expect(preview).not_to_contain_text("Paid:")
    expect(preview).to_contain_text("{")
    result["preview"] = preview.inner_text()
    shot(page, shots, "edit-preview")
    accessibility(page, "edit", result)
    # A rate limit: a bad one explained at its field, then 5 a second.
    edit.get_by_label("Rate limit (requests a second)").fill("0")
    edit.get_by_role("button", name="Save").click()
    rate_error = edit.locator("[data-field=rate_limit] .field-error")
    expect(rate_error).to_be_visible()
    result["rate_limit_error"] = rate_error.inner_text()
    edit.get_by_label("Rate limit (requests a second)").fill("5")
    edit.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    result["format_shown"] = page.locator("table").inner_text()

    # Disable, then enable; delete with a confirmation.
    page.get_by_role("button", name="Disable", exact=True).click()
    expect(page.get_by_role("button", name="Enable", exact=True)).to_be_visible()
    result["disabled_text"] = page.locator(".warning", has_text="receives nothing").inner_text()
    # An event sent while it is disabled (the runner publishes it): kept, held, in history.
    with open(spec["publish_file"], "w") as publish:
        publish.write("publish")
    published = os.path.splitext(spec["publish_file"])[0] + ".done"
    for _ in range(200):
        if os.path.exists(published):
            break
        page.wait_for_timeout(50)
    else:
        raise AssertionError("the runner did not publish within 10 s")
    held_row = None
    for _ in range(20):
        page.get_by_role("button", name="View delivery history").click()
        expect(page.get_by_role("heading", name="Delivery history")).to_be_visible()
        rows = page.locator("tbody tr", has_text="kept until the endpoint is enabled")
        if rows.count():
            held_row = rows.first.inner_text()
            break
        page.get_by_role("link", name="← Endpoint").click()
        page.wait_for_timeout(500)
    assert held_row, "the event sent while disabled is not in the history as held"
    result["held_row"] = held_row
    shot(page, shots, "held")
    accessibility(page, "held", result)
    page.get_by_role("link", name="← Endpoint").click()
    page.get_by_role("button", name="Enable", exact=True).click()
    expect(page.get_by_role("button", name="Disable", exact=True)).to_be_visible()
    # Enabled: the kept event goes.
    result["kept_delivered"] = False
    for _ in range(20):
        page.get_by_role("button", name="View delivery history").click()
        expect(page.get_by_role("heading", name="Delivery history")).to_be_visible()
        if not page.locator("tbody tr", has_text="Held").count():
            result["kept_delivered"] = page.locator("tbody tr").first.inner_text()
            page.get_by_role("link", name="← Endpoint").click()
            break
        page.get_by_role("link", name="← Endpoint").click()
        page.wait_for_timeout(500)
    page.get_by_role("button", name="Delete", exact=True).click()
    confirm = page.get_by_role("dialog", name="Delete endpoint")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Delete endpoint").click()
    expect(page.get_by_text("Deleted ")).to_be_visible()
    result["deleted"] = spec["failing_receiver"] not in page.locator("table").inner_text()

    # Bad input is explained next to the field (back on the list, after the delete).
    page.get_by_role("button", name="Add endpoint").click()
    dialog = page.get_by_role("dialog", name="Add endpoint")
    dialog.get_by_label("Destination URL").fill("https://169.254.169.254/latest")
    dialog.get_by_role("button", name="Create").click()
    error = dialog.locator("[data-field=url] .field-error")
    expect(error).to_be_visible()
    result["url_error"] = error.inner_text()
    shot(page, shots, "bad-url")
    dialog.get_by_role("button", name="Cancel").click()

    # An expired (or revoked) link: the page says so plainly.
    expired = context.new_page()
    expired.goto(spec["expired_url"])
    expect(expired.get_by_role("heading", name="This link has expired")).to_be_visible()
    result["expired_text"] = expired.locator("main").inner_text()
    shot(expired, shots, "expired")
    accessibility(expired, "expired", result)

    result["page_errors"] = errors


if __name__ == "__main__":
    main()
