"""Building the two instances of a class and their inputs (step 3 of
`dslc.verify.equivalence`): from a factory, from a tiny configuration, as a
plain module built without arguments, or through a whole model containing it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

from dslc.verify import tinyconfig
from dslc.verify.loading import Loaded, one_line


@dataclass
class Built:
    original: Any
    rewritten: Any
    inputs: dict[str, Any]
    via: str | None = None
    described: str = ""  # how synthesised inputs were made (plain modules)


class ClassSkip(Exception):
    pass


class ClassFail(Exception):
    pass


def _as_kwargs(forward: Any, inputs: Any) -> dict[str, Any]:
    """Factory inputs (a tuple, or a dict) as keyword arguments of forward."""
    if isinstance(inputs, dict):
        return dict(inputs)
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    names = [p for p in list(inspect.signature(forward).parameters)[1:]]
    if len(inputs) > len(names):
        return {f"__pos{i}": v for i, v in enumerate(inputs)}
    return dict(zip(names, inputs))


def call_module(module: Any, kwargs: dict[str, Any]) -> Any:
    pos = [v for k, v in kwargs.items() if k.startswith("__pos")]
    if pos:
        return module(*pos)
    return module(**kwargs)


def build_with_factory(factory: Any, orig_cls: type, new_cls: type, seed: int, torch: Any) -> Built:
    torch.manual_seed(seed)
    try:
        m0, x0 = factory(orig_cls)
    except Exception as exc:  # noqa: BLE001
        raise ClassSkip(f"class not constructible: factory failed on the original: {one_line(exc)}") from None
    torch.manual_seed(seed)
    try:
        m1, _ = factory(new_cls)
    except Exception as exc:  # noqa: BLE001
        raise ClassFail(f"the factory fails on the rewritten class: {one_line(exc)}") from None
    return Built(m0, m1, _as_kwargs(orig_cls.forward, x0))


def build_from_config(loaded: Loaded, name: str, seed: int, torch: Any, variant: int = 0,
                       input_shapes: tuple = ()) -> Built:
    """Tiny-config construction, falling back to a containing whole model;
    a plain module without a config is built without arguments (`_build_plain`)."""
    orig_cls = getattr(loaded.original, name)
    new_cls = getattr(loaded.rewritten, name)
    configs = tinyconfig.config_candidates(loaded.original, orig_cls)
    if not configs or input_shapes:
        return _build_plain(orig_cls, new_cls, seed, torch, input_shapes, has_config=bool(configs))
    why = "class not constructible"
    for config_cls in configs:
        try:
            if variant >= len(tinyconfig.variants(config_cls)):
                continue
            cfg = tinyconfig.tiny_config(config_cls, variant)
            torch.manual_seed(seed)
            m0 = tinyconfig.construct_with_config(orig_cls, cfg)
        except Exception as exc:  # noqa: BLE001 - try the next config / the model
            why = f"class not constructible from {config_cls.__name__}: {one_line(exc)}"
            continue
        m0.eval()
        inputs = _fitting_inputs(m0, orig_cls.forward, cfg, torch)
        if inputs is None:
            why = "cannot synthesise inputs for its forward"
            break
        torch.manual_seed(seed)
        try:
            m1 = tinyconfig.construct_with_config(new_cls, cfg)
        except Exception as exc:  # noqa: BLE001
            raise ClassFail(f"the rewritten class does not construct: {one_line(exc)}") from None
        return Built(m0, m1, inputs)
    return _build_whole_model(loaded, name, why, seed, torch, variant)


def _required_params(forward: Any) -> list[str]:
    try:
        params = list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _first_layer_shapes(module: Any, torch: Any) -> tuple[str, list[tuple[tuple[int, ...], str]]]:
    """Input shapes a plain module's first layer takes: (description, [(shape, dtype)])."""
    nn = torch.nn
    for sub in module.modules():
        if sub is module and not isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding,
                                                  nn.LayerNorm, nn.RNNBase)):
            continue
        if isinstance(sub, nn.Linear):
            d = sub.in_features
            return f"the first Linear's in_features={d}", [((2, 4, d), "float"), ((2, d), "float")]
        if isinstance(sub, nn.Conv1d):
            c = sub.in_channels
            return f"the first Conv1d's in_channels={c}", [((2, c, 16), "float")]
        if isinstance(sub, nn.Conv2d):
            c = sub.in_channels
            return f"the first Conv2d's in_channels={c}", [((2, c, 8, 8), "float")]
        if isinstance(sub, nn.Conv3d):
            c = sub.in_channels
            return f"the first Conv3d's in_channels={c}", [((2, c, 4, 4, 4), "float")]
        if isinstance(sub, nn.Embedding):
            return f"the first Embedding's num_embeddings={sub.num_embeddings}", [((2, 8), "index")]
        if isinstance(sub, nn.LayerNorm):
            shape = tuple(sub.normalized_shape)
            return f"the first LayerNorm's normalized_shape={shape}", [((2, 4, *shape), "float")]
        if isinstance(sub, nn.RNNBase):
            d = sub.input_size
            shape = (2, 5, d) if sub.batch_first else (5, 2, d)
            return f"the first {type(sub).__name__}'s input_size={d}", [(shape, "float")]
    return "", []


def _build_plain(orig_cls: type, new_cls: type, seed: int, torch: Any, input_shapes: tuple,
                 has_config: bool = False) -> Built:
    """A module without a config: built with no arguments, inputs synthesised.

    1. Both classes are constructed without arguments (same seed); a class
       whose constructor needs arguments is skipped: pass --factory.
    2. The inputs of forward's required parameters: `--input-shape` when
       given (one shape for all, or one per parameter, in order), else from
       the first layer of the original module: a Linear's in_features
       (shape (2, 4, in_features), then (2, in_features)), a Conv's
       in_channels ((2, C, 16) / (2, C, 8, 8) / (2, C, 4, 4, 4)), an
       Embedding's vocabulary (integer indices (2, 8)), a LayerNorm's
       normalized_shape, an RNN's input_size.  Seeded random values; the
       first candidate the original runs on is used.
    """
    required = _required_params(orig_cls.forward)
    torch.manual_seed(seed)
    try:
        m0 = orig_cls()
    except TypeError as exc:
        if has_config:
            raise ClassSkip(f"--input-shape is for modules built without arguments: {one_line(exc)}") from None
        raise ClassSkip(f"no factory, and the class needs constructor arguments ({one_line(exc)}): pass "
                         "--factory FILE.py:FUNC") from None
    m0.eval()
    if input_shapes:
        shapes = list(input_shapes)
        if len(shapes) == 1:
            shapes = shapes * len(required)
        if len(shapes) != len(required):
            raise ClassSkip(f"--input-shape given {len(input_shapes)} times, but forward has {len(required)} "
                             f"required inputs ({', '.join(required)})")
        how = "from --input-shape " + ", ".join("x".join(map(str, sh)) for sh in shapes)
        candidates = [(how, [(tuple(sh), "float") for sh in shapes])]
    else:
        what, options = _first_layer_shapes(m0, torch)
        if not options or not required:
            raise ClassSkip("no factory, no config, and no first Linear/Conv/Embedding/LayerNorm layer to "
                             "shape the inputs by: pass --input-shape or --factory FILE.py:FUNC")
        candidates = [(f"shape {'x'.join(map(str, sh))} from {what}", [(sh, kind)] * len(required))
                      for sh, kind in options]
    for how, specs in candidates:
        gen = torch.Generator().manual_seed(seed + 4321)
        inputs = {}
        for name, (shape, kind) in zip(required, specs):
            if kind == "index":
                high = next(m.num_embeddings for m in m0.modules() if isinstance(m, torch.nn.Embedding))
                inputs[name] = torch.randint(0, high, shape, generator=gen)
            else:
                inputs[name] = torch.randn(*shape, generator=gen)
        try:
            with torch.no_grad():
                m0(**inputs)
        except Exception:  # noqa: BLE001 - the shape did not fit; try the next
            continue
        torch.manual_seed(seed)
        try:
            m1 = new_cls()
        except Exception as exc:  # noqa: BLE001
            raise ClassFail(f"the rewritten class does not construct: {one_line(exc)}") from None
        return Built(m0, m1, inputs, described=f"inputs synthesised: {how}")
    raise ClassSkip("cannot synthesise inputs for its forward (tried "
                     + "; ".join(how for how, _ in candidates) + "): pass --input-shape or --factory")


def _fitting_inputs(m0: Any, forward: Any, cfg: Any, torch: Any) -> dict[str, Any] | None:
    for kwargs in tinyconfig.input_candidates(forward, cfg, torch):
        try:
            with torch.no_grad():
                m0(**kwargs)
        except Exception:  # noqa: BLE001 - the shape did not fit; try the next
            continue
        return kwargs
    return None


def _build_whole_model(loaded: Loaded, name: str, why: str, seed: int, torch: Any,
                       variant: int = 0) -> Built:
    """Run a class of the file that contains `name` instead.

    1. Candidates: the file's PreTrainedModel subclasses, `XxxModel` first;
       then its other module classes built from a config (a plain file's
       `TinyLM(TinyConfig())`), the smallest instance first.
    2. The first whose tiny instance contains an instance of `name` and runs
       on synthesised inputs is used.
    3. Else the skip says, per containing class tried, why it did not run.
    """
    tried: list[str] = []
    for model_cls, cfg, m0 in _containers(loaded, name, torch, seed, variant, tried):
        m0.eval()
        inputs = _fitting_inputs(m0, model_cls.forward, cfg, torch)
        if inputs is None:
            tried.append(f"{model_cls.__name__} contains it, but no synthesised inputs fit its forward")
            continue
        new_cls = getattr(loaded.rewritten, model_cls.__name__, None)
        if new_cls is None:
            raise ClassFail(f"the rewritten file lost class {model_cls.__name__}")
        torch.manual_seed(seed)
        try:
            m1 = tinyconfig.construct_with_config(new_cls, cfg)
        except Exception as exc:  # noqa: BLE001
            raise ClassFail(f"the rewritten {model_cls.__name__} does not construct: {one_line(exc)}") from None
        return Built(m0, m1, inputs, via=model_cls.__name__)
    if tried:
        raise ClassSkip(f"{why}; no class of the file that contains it runs ({'; '.join(tried)})")
    raise ClassSkip(f"{why}; no class of the file that builds from a config contains it")


def _containers(loaded: Loaded, name: str, torch: Any, seed: int, variant: int,
                tried: list[str]) -> Iterator[tuple[type, Any, Any]]:
    """(class, tiny config, original instance) of each candidate of
    `_build_whole_model` whose instance contains a `name`, in its order; a
    containing class that does not construct is noted in `tried`."""
    module = loaded.original
    mine = [v for k, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module.__name__ and k != name]
    pretrained = sorted((c for c in mine if tinyconfig.is_pretrained_model(c)),
                        key=lambda c: (not c.__name__.endswith("Model"), c.__name__))
    plain = [c for c in mine if not tinyconfig.is_pretrained_model(c) and issubclass(c, torch.nn.Module)
             and _mentions(c, name, mine)]
    later = []
    for model_cls in pretrained + plain:
        for config_cls in tinyconfig.config_candidates(module, model_cls)[:1]:
            if variant >= len(tinyconfig.variants(config_cls)):
                continue
            try:
                cfg = tinyconfig.tiny_config(config_cls, variant)
                torch.manual_seed(seed)
                m0 = tinyconfig.construct_with_config(model_cls, cfg)
            except Exception as exc:  # noqa: BLE001
                if _mentions(model_cls, name, mine):
                    tried.append(f"{model_cls.__name__} does not construct from {config_cls.__name__}: "
                                 f"{one_line(exc)}")
                continue
            if not any(type(m).__name__ == name for m in m0.modules()):
                continue
            if model_cls in plain:
                later.append((sum(1 for _ in m0.modules()), model_cls.__name__, model_cls, cfg, m0))
            else:
                yield model_cls, cfg, m0
    for *_, model_cls, cfg, m0 in sorted(later, key=lambda t: t[:2]):
        yield model_cls, cfg, m0


def _mentions(cls: type, name: str, classes: list[type]) -> bool:
    """Whether `cls`'s methods name `name`, directly or through another class
    of the file they name (a cheap filter before constructing it)."""
    by_name = {c.__name__: c for c in classes}
    seen, todo = set(), [cls]
    while todo:
        c = todo.pop()
        if c.__name__ in seen:
            continue
        seen.add(c.__name__)
        names: set[str] = set()
        codes = [fn.__code__ for fn in vars(c).values() if hasattr(fn, "__code__")]
        while codes:  # with the comprehensions and lambdas inside the methods
            code = codes.pop()
            names.update(code.co_names)
            codes.extend(k for k in code.co_consts if hasattr(k, "co_names"))
        if name in names:
            return True
        todo.extend(by_name[n] for n in names if n in by_name)
    return False
