"""Walks the Guide through the venue's Settings → Webhooks page in a real browser (Debian's
Chromium, driven by Playwright), as a venue admin would, finding every control by its
accessible name. Run by tests/portal.rs, which gives it the portal links and the receivers and
checks what the receivers got.

    walk.py <input.json>   input: {"url", "expired_url", "signed_receiver", "bearer_receiver", "shots"}

Prints one JSON object: what the page showed (the secret and token copied from it, the test
outcome, …). Any step that fails raises, and the process exits non-zero with the reason.
"""

import json
import os
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
TIMEOUT_MS = 15_000


def shot(page, shots, name):
    if shots:
        page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def create(page, url, mode, shots=None):
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
    else:
        dialog.get_by_label("Signed secret (recommended)").check()
    if shots:
        shot(page, shots, "add-endpoint")
    dialog.get_by_role("button", name="Create").click()
    once = page.get_by_role("dialog", name="Endpoint created")
    expect(once).to_be_visible()
    expect(once.get_by_text("It will not be shown again")).to_be_visible()
    once.get_by_role("button", name="Copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    if shots:
        shot(page, shots, "secret-shown-once")
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

    # A signed endpoint: the secret is copied from the page.
    result["secret"] = create(page, spec["signed_receiver"], "signed", shots)
    result["secret_gone_after_closing"] = result["secret"] not in page.content()
    page.get_by_role("button", name="Send test").click()
    outcome = page.get_by_role("status").filter(has_text="Delivered")
    expect(outcome).to_be_visible()
    result["test_outcome"] = outcome.inner_text()
    shot(page, shots, "endpoint-send-test")
    page.get_by_role("button", name="View delivery history").click()
    expect(page.get_by_role("heading", name="Delivery history")).to_be_visible()
    result["history_rows"] = page.locator("tbody tr").count()
    shot(page, shots, "history")
    page.get_by_role("link", name="← Endpoint").click()
    page.get_by_role("link", name="← All endpoints").click()

    # A bearer endpoint with a generated token.
    result["token"] = create(page, spec["bearer_receiver"], "bearer")
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status").filter(has_text="Delivered")).to_be_visible()
    page.get_by_role("link", name="← All endpoints").click()

    # Keyboard only: the create flow without the mouse.
    page.keyboard.press("Tab")
    for _ in range(40):
        if page.evaluate("document.activeElement.textContent") == "Add endpoint":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Add endpoint")
    expect(dialog).to_be_visible()
    page.keyboard.type(spec["signed_receiver"])
    for _ in range(120):
        if page.evaluate("document.activeElement.textContent") == "Create":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    once = page.get_by_role("dialog", name="Endpoint created")
    expect(once).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Send test")).to_be_visible()
    result["keyboard_created"] = True

    # Bad input is explained next to the field.
    page.get_by_role("link", name="← All endpoints").click()
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

    result["page_errors"] = errors


if __name__ == "__main__":
    main()
