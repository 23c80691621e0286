"""A local web app to look at a model's explanations: ``bcosify serve MODEL_DIR`` (Gradio).

Upload an image or pick one of the packaged photos; the page shows the top-5 classes, each with
its B-cos colour explanation, its contribution map and its completeness line, and explains any
other class on request. Runs locally (``127.0.0.1``); needs ``pip install 'bcosify[app]'``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from bcosify.errors import BcosifyError

TOP_K = 5


def _gradio():
    try:
        import gradio as gr
    except ImportError as e:
        raise BcosifyError("bcosify serve needs Gradio: pip install 'bcosify[app]'") from e
    return gr


def render(model: nn.Module, image, target: int | None = None) -> list[tuple[np.ndarray, str]]:
    """The explanations the page shows, as (image, caption) pairs: the top-5 classes (or the
    class ``target``), each image the input crop, its colour explanation and its contribution
    map side by side; the caption names the class, its logit and the completeness error."""
    from bcosify.evaluate.data import imagenet_names
    from bcosify.explain import explain
    from bcosify.viz import side_by_side

    if image is None:
        raise BcosifyError("no image: upload one or pick a photo")
    n = int(model.bcosify_num_classes)
    names = imagenet_names(n)
    x = model.transform(image.convert("RGB")).unsqueeze(0)
    if target is not None and not 0 <= int(target) < n:
        raise BcosifyError(f"the class must lie in [0, {n - 1}], got {target}")
    # one forward, a backward pass per class: B=1 x k explanations
    e = explain(model, x, target=f"topk:{min(TOP_K, n)}" if target is None else [[int(target)]])
    targets = e.target[0].tolist()
    rgba, maps = e.to_rgba()[0], e.contribution_map[0]
    logits = e.explained_logit[0].tolist()
    sums = e.contributions[0].flatten(1).sum(1).tolist()
    constants = e.constant_total[0].tolist()
    out = []
    for k, t in enumerate(targets):
        label = names[t] if names and t < len(names) else f"class {t}"
        caption = (
            f"{label} ({t}): logit {logits[k]:.4f} = contributions {sums[k]:.4f} + constants "
            f"{constants[k]:.4f}"
        )
        out.append((side_by_side(x[0], rgba[k], maps[k]), caption))
    return out


def build_app(model: nn.Module, title: str = "bcosify"):
    """The Gradio Blocks app for ``model`` (a converted model)."""
    from bcosify.convert import is_converted
    from bcosify.sources import demo_photos

    if not is_converted(model):
        raise BcosifyError(
            f"bcosify serve needs a converted model, got an unconverted {type(model).__name__}"
        )
    gr = _gradio()
    photo_dir = Path(tempfile.mkdtemp(prefix="bcosify-app-photos-"))
    examples = []
    for name, photo in demo_photos():
        path = photo_dir / f"{name}.png"
        photo.save(path)
        examples.append([str(path)])
    model.eval()

    def explain_image(image, class_text):
        text = (class_text or "").strip()
        if text and not text.lstrip("-").isdigit():
            raise gr.Error(f"the class must be a number, got {text!r}")
        try:
            return render(model, image, int(text) if text else None)
        except BcosifyError as e:
            raise gr.Error(str(e)) from e

    with gr.Blocks(title=title) as app:
        gr.Markdown(
            f"## {title}: exact explanations\nEach image: the input, its B-cos colour "
            "explanation (the pixels' evidence, in their colours) and the contribution map "
            "(red for, blue against). Contributions plus the reported constants sum to the logit."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="image", elem_id="input-image")
                target = gr.Textbox(
                    label="class to explain (empty: the top 5)", elem_id="class-to-explain"
                )
                button = gr.Button("Explain", variant="primary", elem_id="explain-button")
                if examples:
                    gr.Examples(examples, inputs=[image], label="packaged photos")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="explanations (input | colour explanation | contribution map)",
                    columns=1,
                    elem_id="explanations",
                    height="auto",
                    preview=False,
                    object_fit="contain",
                )
        button.click(explain_image, inputs=[image, target], outputs=[gallery])
    return app


def serve(
    model_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
):
    """Load ``model_dir`` (or ``hf-hub:org/name``) and serve the app locally. Returns the app
    (``block=False``: after starting it in the background)."""
    from bcosify.io import load

    model = load(model_dir)
    app = build_app(model, title=f"bcosify: {Path(str(model_dir)).name}")
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True)
    return app


__all__ = ["build_app", "render", "serve"]
