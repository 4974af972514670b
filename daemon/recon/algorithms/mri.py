"""Cartesian 2D MRI reconstruction: k-space buffer, centred 2D FFT, root-sum-of-squares.

Conventions (those of :mod:`medacq.protocols.mri_sequences`): line ``j`` of an ``N``-line
image is ``ky = (j - N/2) / FOV``, sample ``i`` is ``kx = (i - N/2) / FOV``; the image is
``(y, x)`` with row ``r`` at ``y = (r - N/2) · FOV/N`` (row 0 the most negative y) and column
``c`` at ``x = (c - N/2) · FOV/N``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CartesianKspace", "centred_ifft2", "centred_fft2", "rss", "adaptive_combine", "homodyne", "pocs"]


def centred_ifft2(k: np.ndarray) -> np.ndarray:
    """Image of centred k-space over the last two axes ``(ky, kx)`` (sample N/2 = k 0)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), axes=(-2, -1)), axes=(-2, -1))


def centred_fft2(img: np.ndarray) -> np.ndarray:
    """Centred k-space of images over the last two axes (the inverse of :func:`centred_ifft2`)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), axes=(-2, -1)), axes=(-2, -1))


def rss(coil_images: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares over axis 0 (coils)."""
    return np.sqrt(np.sum(coil_images.real ** 2 + coil_images.imag ** 2, axis=0))


class CartesianKspace:
    """K-space of one slice, ``(coil, ky, kx)`` complex64, filled line by line.

    ``add(line, data)`` stores a ``(coil, readout)`` line; ``image()`` the RSS magnitude image
    ``(y, x)`` float32 of what has arrived (missing lines are zero); ``filled`` a per-line mask.
    """

    def __init__(self, coils: int, n_phase: int, n_read: int) -> None:
        self.k = np.zeros((coils, n_phase, n_read), np.complex64)
        self.filled = np.zeros(n_phase, bool)

    def add(self, line: int, data: np.ndarray) -> None:
        if not 0 <= line < self.k.shape[1] or data.shape != (self.k.shape[0], self.k.shape[2]):
            raise ValueError(f"line {line} shape {data.shape} does not fit k-space {self.k.shape}")
        self.k[:, line, :] = data
        self.filled[line] = True

    def reset(self) -> None:
        self.k[:] = 0
        self.filled[:] = False

    def image(self, combine: str = "rss", acquired_lines: int | None = None,
              partial_fourier: str = "homodyne") -> np.ndarray:
        """The magnitude image ``(y, x)`` float32: coils combined by ``rss`` or ``adaptive``;
        with ``acquired_lines`` < N (partial Fourier, lines ``0 .. acquired_lines - 1``) each
        coil reconstructed by ``homodyne`` (its negative part clipped) or ``pocs``."""
        n = self.k.shape[1] * self.k.shape[2]
        if acquired_lines is not None and acquired_lines < self.k.shape[1]:
            coils: np.ndarray = (pocs(self.k, acquired_lines) if partial_fourier == "pocs"
                                 else homodyne(self.k, acquired_lines).clip(min=0))
        else:
            coils = centred_ifft2(self.k)
        img = adaptive_combine(coils) if combine == "adaptive" else rss(coils)
        return (img * n).astype(np.float32)


def adaptive_combine(coil_images: np.ndarray, window: int = 7) -> np.ndarray:
    """Adaptive coil combination (Walsh, Gmitro & Marcellin 2000): per pixel, the dominant
    eigenvector ``v`` of the coil covariance summed over a ``window × window`` neighbourhood
    weights the coils; returns ``|v^H x|`` ``(y, x)`` float32 (equal to RSS where one coil
    profile explains the neighbourhood, less noise where coils see only noise)."""
    from scipy.ndimage import uniform_filter

    x = np.asarray(coil_images)
    nc = x.shape[0]
    r = np.empty(x.shape[1:] + (nc, nc), np.complex128)
    for i in range(nc):
        for j in range(i, nc):
            p = x[i] * np.conj(x[j])
            f = uniform_filter(p.real, window) + 1j * uniform_filter(p.imag, window)
            r[..., i, j] = f
            r[..., j, i] = np.conj(f)
    _, vecs = np.linalg.eigh(r)
    v = vecs[..., :, -1]  # dominant eigenvector, (y, x, coil)
    out: np.ndarray = np.abs(np.einsum("yxc,cyx->yx", np.conj(v), x)).astype(np.float32)
    return out


def homodyne(k: np.ndarray, n_acquired: int) -> np.ndarray:
    """Homodyne partial-Fourier reconstruction (Noll, Nishimura & Macovski 1991) of centred
    k-space ``(coil, ky, kx)`` whose lines ``0 .. n_acquired - 1`` were acquired (the rest
    zero): the lines beyond the symmetric centre band are doubled (a ramp across the band), the
    phase of the band's low-resolution image is removed, the real part kept. Returns the
    per-coil real images ``(coil, y, x)``."""
    n = k.shape[-2]
    c = n // 2
    over = n_acquired - c  # lines acquired past the centre
    if over <= 0:
        raise ValueError(f"partial Fourier needs more than half of the {n} lines; got {n_acquired}")
    if n_acquired >= n:
        return np.asarray(centred_ifft2(k).real)
    ky = np.arange(n)
    lo, hi = c - over, c + over  # symmetric band [lo, hi)
    w = np.zeros(n)
    w[:lo] = 2.0
    band = (ky >= lo) & (ky < hi)
    w[band] = 1.0 - (ky[band] - c + 0.5) / over  # 2 -> 0 across the band, 1 at the centre
    low = np.zeros(n)
    low[band] = np.hanning(int(band.sum()) + 2)[1:-1]
    ph = np.angle(centred_ifft2(k * low[None, :, None]))
    img = centred_ifft2(k * w[None, :, None]) * np.exp(-1j * ph)
    return np.asarray(img.real)


def _band_phase(k: np.ndarray, n_acquired: int) -> np.ndarray:
    """Phase ``(coil, y, x)`` of the low-resolution image of the symmetric centre band of lines
    (Hann-weighted), acquired on both sides of ky = 0."""
    n = k.shape[-2]
    c = n // 2
    over = n_acquired - c
    if over <= 0:
        raise ValueError(f"partial Fourier needs more than half of the {n} lines; got {n_acquired}")
    low = np.zeros(n)
    low[c - over:c + over] = np.hanning(2 * over + 2)[1:-1]
    out: np.ndarray = np.angle(centred_ifft2(k * low[None, :, None]))
    return out


def pocs(k: np.ndarray, n_acquired: int, iterations: int = 10) -> np.ndarray:
    """Projection-onto-convex-sets partial-Fourier reconstruction (Haacke, Lindskog & Lin 1991)
    of centred k-space ``(coil, ky, kx)`` whose lines ``0 .. n_acquired - 1`` were acquired:
    starting from the zero-filled image, alternately impose the centre band's low-resolution
    phase on the image and put the acquired lines back into its k-space, ``iterations`` times.
    Returns the per-coil complex images ``(coil, y, x)`` (their magnitude is the result)."""
    n = k.shape[-2]
    if n_acquired >= n:
        return np.asarray(centred_ifft2(k))
    phase = np.exp(1j * _band_phase(k, n_acquired))
    acq = k[:, :n_acquired, :]
    est = np.array(k, dtype=np.complex128)
    est[:, n_acquired:, :] = 0
    img = centred_ifft2(est)
    for _ in range(iterations):
        est = centred_fft2(np.abs(img) * phase)
        est[:, :n_acquired, :] = acq
        img = centred_ifft2(est)
    return np.asarray(img)
