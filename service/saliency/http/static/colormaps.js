// Colormaps as a few anchor colours, interpolated linearly into 256-entry lookup tables.
// Anchors are sampled from matplotlib's maps of the same names (coolwarm: Moreland's); coolwarm
// and rdbu are diverging: their middle colour is 0 of a signed map.

export const COLORMAPS = {
  inferno: { anchors: [
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]] },
  viridis: { anchors: [
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137], [53, 183, 121],
    [109, 205, 89], [180, 222, 44], [253, 231, 37]] },
  jet: { anchors: [
    [0, 0, 128], [0, 0, 255], [0, 128, 255], [0, 255, 255], [128, 255, 128], [255, 255, 0], [255, 128, 0], [255, 0, 0], [128, 0, 0]] },
  gray: { anchors: [[0, 0, 0], [255, 255, 255]] },
  coolwarm: { anchors: [
    [59, 76, 192], [98, 130, 234], [141, 176, 254], [184, 208, 249], [221, 221, 221], [245, 196, 173], [244, 154, 123],
    [222, 96, 77], [180, 4, 38]] },
  rdbu: { anchors: [
    [5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247], [253, 219, 199],
    [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31]] },
};

const tables = new Map();

// [r0, g0, b0, r1, ...] for t = 0/255 ... 255/255; diverging maps have their centre at 127.5.
export function colorLut(name) {
  let lut = tables.get(name);
  if (lut) return lut;
  const anchors = (COLORMAPS[name] ?? COLORMAPS.inferno).anchors;
  lut = new Uint8ClampedArray(256 * 3);
  const last = anchors.length - 1;
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * last;
    const j = Math.min(last - 1, Math.floor(x));
    const f = x - j;
    for (let c = 0; c < 3; c++) lut[3 * i + c] = anchors[j][c] + (anchors[j + 1][c] - anchors[j][c]) * f;
  }
  tables.set(name, lut);
  return lut;
}
