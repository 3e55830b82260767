"""Customer-facing HTML pages, server-rendered in German and English: the preferences page
(``/p/TOKEN``) and the unsubscribe confirmation (``/u/TOKEN``).

Templates and texts live here as Python strings (Jinja, autoescaped), so they ship inside
the package like any module. The pages carry no e-mail address in clear (it is shown
masked) and load nothing from elsewhere: no scripts, fonts or trackers.
"""

from __future__ import annotations

from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape

from recocamp.campaigns.caps import PREFERENCE_PERIODS
from recocamp.domain import FALLBACK_LOCALE, LOCALES

PAUSE_WEEKS = (1, 2, 4, 8, 12)  # the pause form's choices (and what the form handler accepts)
FREQUENCIES = ("any", *PREFERENCE_PERIODS)  # "any": no limit of the customer's own

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your e-mail preferences",
        "intro": "Choose what {shop} may send you. Changes apply from the next e-mail on.",
        "subscribed": "You receive our offers by e-mail.",
        "unsubscribed": "You are unsubscribed: we send you no marketing e-mails.",
        "paused": "E-mails are paused until {date}.",
        "channel_email": "Send me offers by e-mail",
        "frequency": "How often at most",
        "frequency_any": "Whenever there is something for me",
        "frequency_daily": "At most once a day",
        "frequency_weekly": "At most once a week",
        "frequency_monthly": "At most once a month",
        "objection": "Do not use my purchases for personal recommendations (objection to "
        "profiling, Art. 21 GDPR)",
        "save": "Save",
        "pause_title": "Take a break",
        "pause": "Pause e-mails",
        "weeks": "{n} weeks",
        "week": "1 week",
        "resume": "Resume now",
        "unsubscribe_title": "Unsubscribe",
        "unsubscribe_all": "Unsubscribe from everything",
        "data_title": "What we hold about you",
        "field_email": "E-mail address",
        "field_first_name": "First name",
        "field_locale": "Language",
        "field_time_zone": "Time zone",
        "field_country": "Country",
        "field_birthday": "Birthday",
        "field_consent": "Consent",
        "field_orders": "Orders",
        "field_emails": "Marketing e-mails we sent you",
        "field_profiling": "Personal recommendations",
        "orders_summary": "{orders} orders of {items}, {first} to {last}",
        "orders_one": "1 order of {items} on {first}",
        "items_many": "{n} different items",
        "items_one": "1 item",
        "emails_summary": "{count}, the last on {last}",
        "none": "none",
        "profiling_on": "yes: computed from your purchases",
        "profiling_off": "no: you objected to profiling, you see popular items only",
        "field_forecast": "Purchase forecast",
        "forecast_low": "We estimate that you are likely to order again by {until}.",
        "forecast_medium": "We are unsure whether you will order again by {until}.",
        "forecast_high": "We estimate that you are unlikely to order again by {until}.",
        "forecast_due": "Going by the time between your past orders, your next one would be "
        "due around {date}.",
        "forecast_due_typical": "Going by the usual time between orders in our shop (you have "
        "ordered on one day so far), your next one would be due around {date}.",
        "forecast_off": "none: you objected to profiling",
        "forecast_note": "The purchase forecast is an estimate computed from your orders; we "
        "use it to decide which e-mails to send you. If you object to profiling, we delete it "
        "and compute none.",
        "objection_link": "Object to profiling (the box at the top)",
        "consent_double_opt_in": "you confirmed your sign-up (double opt-in)",
        "consent_existing_customer": "you are our customer: offers similar to what you "
        "bought (§ 7 (3) UWG), you may object at any time",
        "consent_none": "no consent to marketing e-mails",
        "since": "since {date}",
        "why_title": "Why you got this offer",
        "why_campaign": "The e-mail “{campaign}” went to you because you matched its "
        "audience and your consent allows it: {consent}.",
        "why_manual": "This link was made for you by the shop, not sent with a campaign; "
        "your consent: {consent}.",
        "why_personal": "The offers were picked from your purchases — for example:",
        "why_popular": "The offers are items that are popular right now — for example:",
        "download": "Download my data (JSON)",
        "download_about": "Everything recocamp holds about this customer (GDPR Art. 15 and "
        "20): one list of rows per table; e-mail bodies unpacked.",
        "download_left_out": "Rows that hold this customer's e-mail address but name no "
        "customer id are left out: other customer ids hold the address too, so those rows "
        "cannot be attributed to this one.",
        "erase_title": "Erase my data",
        "erase_text": "We delete your profile, your consent records and your e-mails, and "
        "separate your past orders from you. A suppression entry (a one-way hash of your "
        "address) stays if you unsubscribed, so we never write to you again.",
        "erase_confirm": "I understand that this cannot be undone",
        "erase": "Erase my data",
        "done_saved": "Your preferences are saved.",
        "done_paused": "E-mails are paused.",
        "done_resumed": "E-mails are back on.",
        "done_unsubscribed": "You are unsubscribed from all marketing e-mails.",
        "erased": "Your data has been erased. We will not contact you again.",
        "unknown": "We hold no data about you.",
        "invalid": "This link is not valid (any more).",
        "retired": "This link is from an older e-mail and no longer opens your data: please "
        "use the link in a newer e-mail from us. Its unsubscribe link still works.",
        "links_off": "These links are switched off.",
        "confirm_needed": "Please tick the box to confirm the erasure.",
        "unsubscribe_question": "Stop marketing e-mails from {shop}?",
        "unsubscribe_button": "Unsubscribe",
        "unsubscribe_done": "You will get no more marketing e-mails from {shop}.",
        "unsubscribe_page": "Unsubscribe",
        "unsubscribed_page": "Unsubscribed",
        "erased_page": "Erased",
        "error_page": "Not possible",
        "name": "English",  # the language's own name: the link to this language
    },
    "de": {
        "title": "Ihre E-Mail-Einstellungen",
        "intro": "Legen Sie fest, was {shop} Ihnen senden darf. Änderungen gelten ab der "
        "nächsten E-Mail.",
        "subscribed": "Sie erhalten unsere Angebote per E-Mail.",
        "unsubscribed": "Sie sind abgemeldet: Wir senden Ihnen keine Werbe-E-Mails.",
        "paused": "E-Mails sind pausiert bis zum {date}.",
        "channel_email": "Angebote per E-Mail senden",
        "frequency": "Wie oft höchstens",
        "frequency_any": "Wann immer es etwas für mich gibt",
        "frequency_daily": "Höchstens einmal am Tag",
        "frequency_weekly": "Höchstens einmal pro Woche",
        "frequency_monthly": "Höchstens einmal im Monat",
        "objection": "Meine Einkäufe nicht für persönliche Empfehlungen verwenden "
        "(Widerspruch gegen Profiling, Art. 21 DSGVO)",
        "save": "Speichern",
        "pause_title": "Eine Pause einlegen",
        "pause": "E-Mails pausieren",
        "weeks": "{n} Wochen",
        "week": "1 Woche",
        "resume": "Jetzt fortsetzen",
        "unsubscribe_title": "Abmelden",
        "unsubscribe_all": "Von allem abmelden",
        "data_title": "Welche Daten wir über Sie speichern",
        "field_email": "E-Mail-Adresse",
        "field_first_name": "Vorname",
        "field_locale": "Sprache",
        "field_time_zone": "Zeitzone",
        "field_country": "Land",
        "field_birthday": "Geburtstag",
        "field_consent": "Einwilligung",
        "field_orders": "Bestellungen",
        "field_emails": "Werbe-E-Mails an Sie",
        "field_profiling": "Persönliche Empfehlungen",
        "orders_summary": "{orders} Bestellungen mit {items}, {first} bis {last}",
        "orders_one": "1 Bestellung mit {items} am {first}",
        "items_many": "{n} verschiedenen Artikeln",
        "items_one": "1 Artikel",
        "emails_summary": "{count}, die letzte am {last}",
        "none": "keine",
        "profiling_on": "ja: aus Ihren Einkäufen berechnet",
        "profiling_off": "nein: Sie haben dem Profiling widersprochen und sehen nur "
        "beliebte Artikel",
        "field_forecast": "Kaufprognose",
        "forecast_low": "Wir schätzen, dass Sie bis zum {until} wahrscheinlich wieder bestellen.",
        "forecast_medium": "Wir sind unsicher, ob Sie bis zum {until} wieder bestellen.",
        "forecast_high": "Wir schätzen, dass Sie bis zum {until} wahrscheinlich nicht wieder "
        "bestellen.",
        "forecast_due": "Nach den Abständen zwischen Ihren bisherigen Bestellungen wäre die "
        "nächste um den {date} fällig.",
        "forecast_due_typical": "Nach dem üblichen Abstand zwischen Bestellungen in unserem Shop "
        "(Sie haben bisher an einem Tag bestellt) wäre Ihre nächste um den {date} fällig.",
        "forecast_off": "keine: Sie haben dem Profiling widersprochen",
        "forecast_note": "Die Kaufprognose ist eine Schätzung aus Ihren Bestellungen; wir "
        "entscheiden damit, welche E-Mails wir Ihnen senden. Widersprechen Sie dem Profiling, "
        "löschen wir sie und berechnen keine.",
        "objection_link": "Dem Profiling widersprechen (das Kästchen oben)",
        "consent_double_opt_in": "Sie haben Ihre Anmeldung bestätigt (Double-Opt-in)",
        "consent_existing_customer": "Sie sind unser Kunde: Angebote ähnlich Ihren Einkäufen "
        "(§ 7 Abs. 3 UWG), Sie können jederzeit widersprechen",
        "consent_none": "keine Einwilligung in Werbe-E-Mails",
        "since": "seit {date}",
        "why_title": "Warum Sie dieses Angebot erhalten haben",
        "why_campaign": "Die E-Mail „{campaign}“ ging an Sie, weil Sie zu ihrer Zielgruppe "
        "gehören und Ihre Einwilligung es erlaubt: {consent}.",
        "why_manual": "Diesen Link hat der Shop für Sie erstellt, nicht mit einer Kampagne "
        "versandt; Ihre Einwilligung: {consent}.",
        "why_personal": "Die Angebote wurden aus Ihren Einkäufen ausgewählt — zum Beispiel:",
        "why_popular": "Die Angebote sind gerade beliebte Artikel — zum Beispiel:",
        "download": "Meine Daten herunterladen (JSON)",
        "download_about": "Alle Daten, die recocamp über Sie speichert (Art. 15 und 20 "
        "DSGVO): je Tabelle eine Liste von Zeilen; E-Mail-Inhalte entpackt.",
        "download_left_out": "Zeilen mit Ihrer E-Mail-Adresse, aber ohne Kundennummer fehlen "
        "hier: Die Adresse gehört auch zu anderen Kundennummern, daher lassen sich diese Zeilen "
        "nicht Ihnen zuordnen.",
        "erase_title": "Meine Daten löschen",
        "erase_text": "Wir löschen Ihr Profil, Ihre Einwilligungen und Ihre E-Mails und "
        "trennen Ihre früheren Bestellungen von Ihnen. Haben Sie sich abgemeldet, bleibt ein "
        "Sperreintrag (ein Einweg-Hash Ihrer Adresse), damit wir Ihnen nie wieder schreiben.",
        "erase_confirm": "Mir ist klar, dass dies nicht rückgängig gemacht werden kann",
        "erase": "Meine Daten löschen",
        "done_saved": "Ihre Einstellungen sind gespeichert.",
        "done_paused": "E-Mails sind pausiert.",
        "done_resumed": "E-Mails sind wieder aktiv.",
        "done_unsubscribed": "Sie sind von allen Werbe-E-Mails abgemeldet.",
        "erased": "Ihre Daten wurden gelöscht. Wir werden Sie nicht mehr kontaktieren.",
        "unknown": "Wir speichern keine Daten über Sie.",
        "invalid": "Dieser Link ist (nicht mehr) gültig.",
        "retired": "Dieser Link stammt aus einer älteren E-Mail und öffnet Ihre Daten nicht "
        "mehr: Bitte nutzen Sie den Link in einer neueren E-Mail von uns. Ihr Abmeldelink "
        "funktioniert weiterhin.",
        "links_off": "Diese Links sind abgeschaltet.",
        "confirm_needed": "Bitte bestätigen Sie die Löschung mit dem Häkchen.",
        "unsubscribe_question": "Keine Werbe-E-Mails mehr von {shop}?",
        "unsubscribe_button": "Abmelden",
        "unsubscribe_done": "Sie erhalten keine Werbe-E-Mails mehr von {shop}.",
        "unsubscribe_page": "Abmelden",
        "unsubscribed_page": "Abgemeldet",
        "erased_page": "Gelöscht",
        "error_page": "Nicht möglich",
        "name": "Deutsch",
    },
}

LAYOUT = """<!doctype html>
<html lang="{{ lang }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.15rem;margin-top:2rem;border-top:1px solid #ddd;
padding-top:1rem}
fieldset{border:1px solid #ccc;border-radius:.4rem;margin:.8rem 0;padding:.6rem 1rem}
label{display:block;margin:.3rem 0}button{font-size:1rem;padding:.5rem 1.1rem;
margin:.4rem 0;cursor:pointer}
.notice{background:#e8f5e9;border:1px solid #a5d6a7;padding:.6rem 1rem;border-radius:.4rem}
.warn{background:#fff3e0;border-color:#ffcc80}
.status{font-weight:600}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #eee;vertical-align:top}
.danger{background:#b71c1c;color:#fff;border:0;border-radius:.3rem}
nav{float:right;font-size:.9rem}
</style></head><body>{% block body %}{% endblock %}</body></html>"""

MESSAGE = """{% extends "layout.html" %}{% block body %}<h1>{{ title }}</h1>
{% for line in lines %}<p>{{ line }}</p>{% endfor %}
{% if form %}<form method="post"><button type="submit">{{ form }}</button></form>{% endif %}
{% endblock %}"""

PREFERENCES = """{% extends "layout.html" %}{% block body %}
<nav>{% for other in others %}<a href="?lang={{ other }}" hreflang="{{ other }}" lang="{{ other }}">
{{- names[other] }}</a> {% endfor %}</nav>
<h1>{{ t.title }}</h1>
<p>{{ t.intro.format(shop=shop) }}</p>
{% if done %}<p class="notice" role="status">{{ done }}</p>{% endif %}
{% if problem %}<p class="notice warn" role="alert">{{ problem }}</p>{% endif %}
<p class="status" id="status">{{ status }}</p>

<form method="post" id="preferences">
<input type="hidden" name="action" value="save">
<fieldset><legend>{{ t.channel_email }}</legend>
<label><input type="checkbox" name="channel_email" value="on"
{% if c.channel_email %}checked{% endif %}> {{ t.channel_email }}</label></fieldset>
<fieldset><legend>{{ t.frequency }}</legend>
{% for value in frequencies %}<label><input type="radio" name="frequency" value="{{ value }}"
{% if (c.frequency_preference or "any") == value %}checked{% endif %}>
{{ t["frequency_" + value] }}</label>{% endfor %}</fieldset>
<fieldset><label><input type="checkbox" name="objected" value="on"
{% if c.objected_to_profiling %}checked{% endif %}> {{ t.objection }}</label></fieldset>
<button type="submit">{{ t.save }}</button></form>

<h2>{{ t.pause_title }}</h2>
<form method="post" id="pause"><input type="hidden" name="action" value="pause">
<select name="weeks" aria-label="{{ t.pause }}">{% for n in weeks %}
<option value="{{ n }}">{{ t.week if n == 1 else t.weeks.format(n=n) }}</option>{% endfor %}
</select> <button type="submit">{{ t.pause }}</button></form>
{% if paused %}<form method="post" id="resume"><input type="hidden" name="action" value="resume">
<button type="submit">{{ t.resume }}</button></form>{% endif %}

<h2>{{ t.unsubscribe_title }}</h2>
<form method="post" id="unsubscribe"><input type="hidden" name="action" value="unsubscribe">
<button type="submit">{{ t.unsubscribe_all }}</button></form>

<h2>{{ t.data_title }}</h2>
<table id="data">{% for label, value in facts %}<tr><th scope="row">{{ label }}</th>
<td>{{ value }}</td></tr>{% endfor %}</table>
{% if forecast_held %}<p id="forecast-note">{{ t.forecast_note }}
<a href="#preferences">{{ t.objection_link }}</a></p>{% endif %}
<p><a href="{{ download }}" download>{{ t.download }}</a></p>

<h2>{{ t.why_title }}</h2>
<p id="why-sent">{{ (t.why_manual if manual else t.why_campaign).format(
    campaign=campaign, consent=consent) }}</p>
<p>{{ t.why_personal if personal else t.why_popular }}</p>
<ul id="offers">{% for offer in offers %}<li>{{ offer.title }} — {{ offer.why }}</li>
{% endfor %}</ul>

<h2>{{ t.erase_title }}</h2>
<p>{{ t.erase_text }}</p>
<form method="post" id="erase"><input type="hidden" name="action" value="erase">
<label><input type="checkbox" name="confirm" value="on"> {{ t.erase_confirm }}</label>
<button type="submit" class="danger">{{ t.erase }}</button></form>
{% endblock %}"""

ENVIRONMENT = Environment(
    loader=DictLoader(
        {"layout.html": LAYOUT, "message.html": MESSAGE, "preferences.html": PREFERENCES}
    ),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
)


def language(requested: str | None, locale: str | None, default: str) -> str:
    for candidate in (requested, locale, default):
        if candidate in LOCALES:
            return str(candidate)
    return FALLBACK_LOCALE


def message(lang: str, title_key: str, lines: list[str], form: str | None = None) -> str:
    t = TEXTS[lang]
    return ENVIRONMENT.get_template("message.html").render(
        lang=lang, title=t[title_key], lines=lines, form=form
    )


def preferences(lang: str, **context: Any) -> str:
    t = TEXTS[lang]
    return ENVIRONMENT.get_template("preferences.html").render(
        lang=lang,
        title=t["title"],
        t=t,
        others=[other for other in LOCALES if other != lang],  # a link to each of them
        names={locale: TEXTS[locale]["name"] for locale in LOCALES},
        frequencies=FREQUENCIES,
        weeks=PAUSE_WEEKS,
        **context,
    )
