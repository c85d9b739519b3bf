"""Prompt templates for text encoders (CLIP, sentence-transformers).

A template is a string with exactly one ``{}`` placeholder that receives a class name, e.g.
``"a photo of the small {}."``. The template *sets* below are data taken from the official ZegFormer code
(``dingjiansw101/ZegFormer``):

* ``"single"``: the one template ZegFormer uses when ``PROMPT_ENSEMBLE_TYPE`` is ``"single"`` (its default),
  ``'A photo of a {} in the scene'`` -- note: no trailing full stop.
* ``"imagenet_select"``: ``IMAGENET_TEMPLATES_SELECT`` from ZegFormer's ``third_party/imagenet_templates.py``,
  the ensemble its released COCO-Stuff configs select (``PROMPT_ENSEMBLE_TYPE: "imagenet_select"``).
* ``"imagenet_select_clip"``: ``IMAGENET_TEMPLATES_SELECT_CLIP`` from the same file, the 32-template ensemble
  ZegFormer uses for its CLIP segment-classification branch.
* ``"imagenet"``: the 80 CLIP ImageNet templates (``IMAGENET_TEMPLATES``, from OpenAI's prompt-engineering
  notebook; identical to open_clip's ``OPENAI_IMAGENET_TEMPLATES``).
* ``"none"``: the bare class name.

Ensembling convention (ZegFormer / open_clip ``build_zero_shot_classifier``): every filled template is encoded
and L2-normalised, the normalised vectors are averaged and the mean is L2-normalised again.
"""

from __future__ import annotations

from collections.abc import Sequence

from zeroseg.errors import ZeroSegError

PLACEHOLDER = "{}"

ZEGFORMER_SINGLE_TEMPLATE = "A photo of a {} in the scene"

SINGLE_TEMPLATES: tuple[str, ...] = (ZEGFORMER_SINGLE_TEMPLATE,)

IMAGENET_SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "A photo of a {} in the scene",
)

IMAGENET_SELECT_CLIP_TEMPLATES: tuple[str, ...] = (
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "This is a photo of a {}",
    "This is a photo of a small {}",
    "This is a photo of a medium {}",
    "This is a photo of a large {}",
    "This is a masked photo of a {}",
    "This is a masked photo of a small {}",
    "This is a masked photo of a medium {}",
    "This is a masked photo of a large {}",
    "This is a cropped photo of a {}",
    "This is a cropped photo of a small {}",
    "This is a cropped photo of a medium {}",
    "This is a cropped photo of a large {}",
    "A photo of a {} in the scene",
    "a bad photo of the {} in the scene",
    "a photo of the large {} in the scene",
    "a photo of the small {} in the scene",
    "a cropped photo of a {} in the scene",
    "a photo of a masked {} in the scene",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "This is a {} in the scene",
    "This is the {} in the scene",
    "This is one {} in the scene",
    "There is a masked {} in the scene",
    "There is the masked {} in the scene",
    "This is a masked {} in the scene",
    "This is the masked {} in the scene",
    "This is one masked {} in the scene",
)

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": SINGLE_TEMPLATES,
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
    "imagenet_select_clip": IMAGENET_SELECT_CLIP_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "none": (PLACEHOLDER,),
}


def validate_template(template: str) -> str:
    """Checks that ``template`` has exactly one ``{}`` placeholder and no other braces.

    Args:
        template: e.g. ``"a photo of a {}."``.

    Returns:
        The template, unchanged.

    Raises:
        ZeroSegError: if the template is not a string or is malformed.
    """
    if not isinstance(template, str):
        raise ZeroSegError(f"prompt template {template!r} is not a string")
    rest = template.replace(PLACEHOLDER, "")
    if template.count(PLACEHOLDER) != 1 or "{" in rest or "}" in rest:
        raise ZeroSegError(f"prompt template {template!r} needs exactly one '{{}}' and no other braces")
    return template


def get_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Resolves a template-set name or an explicit list of templates.

    Args:
        templates: one of ``TEMPLATE_SETS`` (``"single"``, ``"imagenet_select"``, ``"imagenet_select_clip"``,
            ``"imagenet"``, ``"none"``), a single template string containing ``{}``, or a sequence of
            template strings.

    Returns:
        The validated templates, in order.

    Raises:
        ZeroSegError: for an unknown set name, an empty list or a malformed template.
    """
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        if PLACEHOLDER not in templates:
            valid = ", ".join(sorted(TEMPLATE_SETS))
            raise ZeroSegError(
                f"unknown prompt template set {templates!r}; valid: {valid}, or a template containing '{{}}'"
            )
        return (validate_template(templates),)
    resolved = tuple(validate_template(t) for t in templates)
    if not resolved:
        raise ZeroSegError("empty prompt template list")
    return resolved


def fill_template(template: str, name: str) -> str:
    """Puts ``name`` into the ``{}`` of a validated template (braces inside ``name`` are kept literally)."""
    return template.replace(PLACEHOLDER, name, 1)
