"""Message templates: rendering, missing variables, the sandbox, errors a person can act on."""

from __future__ import annotations

import pytest

from notifications.domain.templates import (
    DEFAULT_TEMPLATES,
    SAMPLE_CONTEXT,
    Template,
    TemplateError,
    check,
    render,
)

MARKETING = {"welcome", "wake_up", "win_back", "churn_warning", "birthday"}


def a_template(body: str, subject: str | None = "Hello") -> Template:
    return Template(id="t", channel="email", subject=subject, body=body)


def reason_for(template: Template, context: dict[str, object]) -> str:
    with pytest.raises(TemplateError) as error:
        render(template, context)
    return error.value.reason


def test_a_template_renders_its_subject_and_body_from_the_context() -> None:
    template = a_template(
        "Hi {{ contact.first_name }}, {{ offer }}", "For {{ contact.first_name }}"
    )

    subject, body = render(template, {"contact": {"first_name": "Ada"}, "offer": "10% off"})

    assert (subject, body) == ("For Ada", "Hi Ada, 10% off")


def test_text_is_not_html_escaped() -> None:
    _, body = render(a_template("{{ name }}"), {"name": 'Smith & Sons "Ltd" <x>'})

    assert body == 'Smith & Sons "Ltd" <x>'


def test_a_line_break_in_a_value_cannot_add_a_line_to_the_subject() -> None:
    subject, _ = render(a_template("b", "Hi {{ name }}"), {"name": "Ada\r\nBcc: x@example.org"})

    assert subject == "Hi Ada Bcc: x@example.org"


def test_a_template_without_a_subject_renders_none_for_it() -> None:
    sms = Template(id="t", channel="sms", subject=None, body="Hi {{ name }}")

    assert render(sms, {"name": "Ada"}) == (None, "Hi Ada")


def test_a_missing_top_level_variable_is_an_error_naming_it() -> None:
    reason = reason_for(a_template("Use {{ code }} today"), {})

    assert "'code'" in reason


def test_a_missing_nested_variable_is_named_by_its_full_path() -> None:
    reason = reason_for(a_template("Hi {{ contact.first_name }}"), {"contact": {"email": "a@b"}})

    assert "'contact.first_name'" in reason


def test_a_missing_variable_is_an_error_even_where_it_is_only_tested() -> None:
    template = a_template("{% if contact.first_name %}Hi {{ contact.first_name }}{% endif %}")

    assert "'contact.first_name'" in reason_for(template, {"contact": {}})


def test_an_empty_value_guarded_by_if_renders_the_fallback() -> None:
    template = a_template("Hi{% if contact.first_name %} {{ contact.first_name }}{% endif %}!")

    assert render(template, {"contact": {"first_name": None}})[1] == "Hi!"


def test_the_sandbox_refuses_python_internals() -> None:
    reason = reason_for(a_template("{{ ''.__class__ }}"), {})

    assert "'__class__'" in reason and "not allowed" in reason


def test_the_sandbox_refuses_to_change_the_context() -> None:
    context: dict[str, object] = {"contact": {"first_name": "Ada"}}

    reason = reason_for(a_template("{{ contact.update(first_name='Eve') }}"), context)

    assert "'update' of contact" in reason
    assert context == {"contact": {"first_name": "Ada"}}


def test_a_syntax_error_names_the_part_and_line() -> None:
    with pytest.raises(TemplateError) as error:
        render(a_template("line one\nline two\n{% if %}\n"), {})

    assert error.value.line == 3
    assert error.value.reason.startswith("body line 3:")


def test_a_syntax_error_in_the_subject_names_the_subject() -> None:
    assert reason_for(a_template("b", "Hi {{ name"), {"name": "x"}).startswith("subject line 1:")


def test_an_expression_that_cannot_be_evaluated_is_a_template_error_with_its_line() -> None:
    reason = reason_for(a_template("one\n{{ total / count }}"), {"total": 1, "count": 0})

    assert reason.startswith("body line 2: cannot evaluate")


def test_the_check_accepts_a_template_that_renders_with_the_sample() -> None:
    template = a_template("Hi {{ contact.first_name }}", "Hello {{ contact.first_name }}")

    assert check(template, {"contact": {"first_name": "Ada"}}) == ("Hello Ada", "Hi Ada")


def test_the_check_rejects_an_email_without_a_subject() -> None:
    with pytest.raises(TemplateError, match="needs a subject"):
        check(a_template("Hi", subject=None), {})


def test_the_check_rejects_a_body_that_renders_empty() -> None:
    with pytest.raises(TemplateError, match="renders empty"):
        check(a_template("{% if vip %}Hi{% endif %}"), {"vip": False})


def test_the_check_reports_what_the_sample_lacks() -> None:
    with pytest.raises(TemplateError, match="'unsubscribe_url'"):
        check(DEFAULT_TEMPLATES["win_back"], {"contact": {"first_name": "Ada"}})


@pytest.mark.parametrize(
    "template_id",
    ["welcome", "care", "wake_up", "win_back", "churn_warning", "detractor_follow_up", "birthday"],
)
def test_every_default_template_renders_with_the_sample_context(template_id: str) -> None:
    template = DEFAULT_TEMPLATES[template_id]

    subject, body = check(template, SAMPLE_CONTEXT)

    assert subject and "{" not in subject
    assert body.startswith("Hi Ada,")
    assert ("https://example.com/unsubscribe/sample" in body) == (template_id in MARKETING)


def test_default_templates_greet_a_contact_without_a_first_name_kindly() -> None:
    context = {"contact": {"first_name": ""}, "unsubscribe_url": "https://u.example/1"}

    subject, body = render(DEFAULT_TEMPLATES["birthday"], context)

    assert subject == "Happy birthday!"
    assert body.startswith("Hi there,")


def test_a_marketing_default_template_without_an_unsubscribe_url_is_an_error() -> None:
    context: dict[str, object] = {"contact": {"first_name": "Ada"}}

    for template_id in MARKETING:
        assert "'unsubscribe_url'" in reason_for(DEFAULT_TEMPLATES[template_id], context)
