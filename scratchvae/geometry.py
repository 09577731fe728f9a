"""TensorFlow 'same' padding geometry, shared by the layers, the kernels' callers and the ONNX export.

'same' means what TensorFlow means: the output has ceil(size / stride) positions and, when the
total padding is odd, the extra row or column goes after. Plain integers only (no NumPy, no Numba).
"""


def same_pads(size, kernel, stride):
    """(output size, pad before, pad after) of a 'same' convolution over `size`."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def same_padding(size, kernel, stride):
    """(output size, pad before): what the gathers need; the rest of the padding is implied."""
    out, before, _ = same_pads(size, kernel, stride)
    return out, before


def phase_taps(kernel, stride, pad, phase):
    """Kernel taps reaching output phase `phase` of the adjoint map, and the input offset of each."""
    taps = [i for i in range(kernel) if (phase + pad - i) % stride == 0]
    return taps, [(phase + pad - i) // stride for i in taps]


def transpose_geometry(size, kernel, stride):
    """(pad before, pad after, output_padding) that make ONNX ConvTranspose the adjoint of a 'same'
    Conv on size * stride: ONNX gives out = stride*(size-1) + output_padding + kernel - before - after.
    The forward conv's pads put every tap where the adjoint puts it; output_padding makes up only
    what TensorFlow's clamp at zero cut off."""
    big = size * stride
    _, before, after = same_pads(big, kernel, stride)
    extra = big - (stride * (size - 1) + kernel - before - after)
    if not 0 <= extra < stride:
        raise ValueError(f"no ONNX ConvTranspose geometry for size {size}, kernel {kernel}, stride {stride}")
    return before, after, extra
