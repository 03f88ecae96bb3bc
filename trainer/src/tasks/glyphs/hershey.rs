//! Hershey stroke fonts (.jhf): parsing and drawing with a round pen.

use std::path::Path;

use super::*;

/// The Hershey alphabets of `dir` (see [`HERSHEY_ALPHABETS`]). A character's code is its
/// ASCII position (Latin, Greek, Cyrillic) or a private-use code point (Japanese glyph
/// index); either way it only names the class.
pub(super) fn hershey_alphabets(dir: &Path, hint: &str) -> Result<Vec<Alphabet>, GlyphError> {
    let mut out = Vec::new();
    for (name, files, all) in HERSHEY_ALPHABETS {
        let fonts = files
            .iter()
            .map(|f| {
                let path = dir.join(format!("{f}.jhf"));
                let text = std::fs::read_to_string(&path).map_err(|_| GlyphError::NoFonts {
                    dir: dir.display().to_string(),
                    hint: hint.to_string(),
                })?;
                parse_jhf(&text).map_err(|why| GlyphError::BadFont {
                    path: path.display().to_string(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slots: Vec<(usize, char)> = if all {
            (1..fonts[0].len())
                .map(|i| (i, char::from_u32(0xE000 + i as u32).unwrap_or('?')))
                .collect()
        } else {
            (b'A'..=b'Z')
                .chain(b'a'..=b'z')
                .map(|c| (c as usize - 32, c as char))
                .collect()
        };
        let chars =
            distinct_characters(slots.into_iter().map(|(slot, code)| (code, slot)), |slot| {
                fonts
                    .iter()
                    .filter_map(|f| f.get(slot).and_then(render_strokes))
                    .collect()
            });
        out.push(Alphabet {
            name: name.to_string(),
            fonts: fonts.len(),
            chars,
        });
    }
    Ok(out)
}

/// A Hershey glyph: strokes of points (font units, y down).
pub(super) type Strokes = Vec<Vec<(f32, f32)>>;

/// Parses a `.jhf` file: per glyph, a 5-column number, a 3-column vertex count, then that
/// many coordinate pairs (each a character minus 'R'); the first pair is the horizontal
/// margins, " R" lifts the pen. A record may continue on following lines.
pub(super) fn parse_jhf(text: &str) -> Result<Vec<Strokes>, String> {
    let mut glyphs = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((no, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let head = line
            .get(5..8)
            .ok_or(format!("line {}: short header", no + 1))?;
        let count: usize = head
            .trim()
            .parse()
            .map_err(|_| format!("line {}: bad vertex count '{head}'", no + 1))?;
        let mut data: Vec<u8> = line.as_bytes()[8..].to_vec();
        while data.len() < 2 * count {
            let (_, more) = lines
                .next()
                .ok_or(format!("line {}: truncated glyph", no + 1))?;
            data.extend_from_slice(more.as_bytes());
        }
        let mut strokes: Strokes = vec![Vec::new()];
        for pair in data[..2 * count].chunks(2).skip(1) {
            if pair == b" R" {
                strokes.push(Vec::new());
            } else {
                let x = pair[0] as f32 - b'R' as f32;
                let y = pair[1] as f32 - b'R' as f32;
                strokes.last_mut().expect("one stroke").push((x, y));
            }
        }
        strokes.retain(|s| !s.is_empty());
        glyphs.push(strokes);
    }
    Ok(glyphs)
}

/// A Hershey glyph drawn with round pen strokes of [`HERSHEY_STROKE`] canvas pixels, its
/// bounding box scaled to [`GLYPH_BOX`] and centred; `None` for an empty or tiny glyph.
pub(super) fn render_strokes(strokes: &Strokes) -> Option<Vec<u8>> {
    let pts = strokes.iter().flatten();
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for &(x, y) in pts {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let side = (x1 - x0).max(y1 - y0);
    if !side.is_finite() || side < 4.0 {
        return None; // punctuation-sized or empty
    }
    let k = (GLYPH_BOX - HERSHEY_STROKE) / side;
    let c = CANVAS as f32 / 2.0;
    let map = |(x, y): (f32, f32)| (c + (x - (x0 + x1) / 2.0) * k, c + (y - (y0 + y1) / 2.0) * k);
    let segments: Vec<((f32, f32), (f32, f32))> = strokes
        .iter()
        .flat_map(|s| {
            let p: Vec<_> = s.iter().map(|&q| map(q)).collect();
            if p.len() == 1 {
                vec![(p[0], p[0])]
            } else {
                p.windows(2).map(|w| (w[0], w[1])).collect()
            }
        })
        .collect();
    let mut canvas = vec![0u8; CANVAS * CANVAS];
    for py in 0..CANVAS {
        for px in 0..CANVAS {
            let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
            let d = segments
                .iter()
                .map(|&(a, b)| segment_distance((x, y), a, b))
                .fold(f32::MAX, f32::min);
            let cover = (HERSHEY_STROKE / 2.0 + 0.5 - d).clamp(0.0, 1.0);
            canvas[py * CANVAS + px] = (cover * 255.0).round() as u8;
        }
    }
    Some(canvas)
}

/// Distance from `p` to the segment `a`-`b`.
pub(super) fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (qx * qx + qy * qy).sqrt()
}
