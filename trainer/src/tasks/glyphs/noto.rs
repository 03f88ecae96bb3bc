//! Noto fonts: which file is which script, which code points are its letters, the base
//! rendering of a character.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale};

use super::*;

/// The script a Noto font file belongs to, or `None` for fonts that are not one script's
/// alphabet (the pan-European NotoSans itself, symbols, math, numerals, hieroglyphs...).
pub fn script_of(file_name: &str) -> Option<String> {
    let family = file_name.split('-').next()?;
    let mut s = family
        .strip_prefix("NotoSans")
        .or_else(|| family.strip_prefix("NotoSerif"))
        .or_else(|| family.strip_prefix("Noto"))?;
    for style in [
        "Kufi",
        "Naskh",
        "Nastaliq",
        "Looped",
        "Rashi",
        "Traditional",
    ] {
        if let Some(rest) = s.strip_prefix(style) {
            s = rest;
        }
    }
    let s = s.strip_suffix("Urdu").map_or(s, |_| "Arabic");
    let s = s.strip_suffix("Unjoined").unwrap_or(s);
    let s = s.strip_suffix("Slanted").unwrap_or(s);
    let s = if s.starts_with("Tifinagh") {
        "Tifinagh"
    } else {
        s
    };
    const NOT_ALPHABETS: [&str; 15] = [
        "",
        "Display",
        "Mono",
        "Math",
        "Music",
        "Symbols",
        "Symbols2",
        "IndicSiyaqNumbers",
        "MayanNumerals",
        "SignWriting",
        "Cuneiform",
        "EgyptianHieroglyphs",
        "AnatolianHieroglyphs",
        "Tangut",
        "Duployan",
    ];
    (!NOT_ALPHABETS.contains(&s)).then(|| s.to_string())
}

/// Code points that are never a script's letters: Latin, Greek, Cyrillic, punctuation and
/// symbol blocks, variation selectors, private use, specials.
pub(super) fn excluded(c: char) -> bool {
    let u = c as u32;
    u < 0x0530
        || (0x1E00..0x1F00).contains(&u)
        || (0x2000..0x2C00).contains(&u)
        || (0x2E00..0x2E80).contains(&u)
        || (0x3000..0x3040).contains(&u)
        || (0xA700..0xA800).contains(&u)
        || (0xE000..0xF900).contains(&u)
        || (0xFB00..0xFB07).contains(&u)
        || (0xFE00..0xFE70).contains(&u)
        || (0xFEFF..=0xFFFF).contains(&u)
}

impl Glyphs {
    pub(super) fn noto_alphabets(dir: &Path, hint: &str) -> Result<Vec<Alphabet>, GlyphError> {
        let no_fonts = || GlyphError::NoFonts {
            dir: dir.display().to_string(),
            hint: hint.to_string(),
        };
        let entries = std::fs::read_dir(dir).map_err(|_| no_fonts())?;
        let mut by_script: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".ttf") || name.ends_with(".otf")) {
                continue;
            }
            if let Some(script) = script_of(&name) {
                by_script.entry(script).or_default().push(path);
            }
        }
        let mut alphabets = Vec::new();
        for (name, mut paths) in by_script {
            // Regular fonts first: a character's candidate test uses its first style.
            paths.sort_by_key(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                (!n.contains("Regular"), n)
            });
            let fonts = paths
                .iter()
                .map(|p| {
                    let bytes = std::fs::read(p).map_err(|e| GlyphError::BadFont {
                        path: p.display().to_string(),
                        why: e.to_string(),
                    })?;
                    FontVec::try_from_vec(bytes).map_err(|e| GlyphError::BadFont {
                        path: p.display().to_string(),
                        why: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let chars = characters(&fonts);
            if chars.len() >= 5 {
                alphabets.push(Alphabet {
                    name,
                    fonts: fonts.len(),
                    chars,
                });
            }
        }
        if alphabets.len() < 3 {
            return Err(no_fonts());
        }
        Ok(alphabets)
    }
}

/// The characters of one script: code points in the fonts' character maps that are
/// letters of the script (not excluded blocks, not marks, not small punctuation), each
/// rendered once per font that has it; renderings identical to an earlier character's are
/// dropped. At most [`MAX_CHARS`], in code point order.
pub(super) fn characters(fonts: &[FontVec]) -> Vec<Character> {
    let mut codes: Vec<char> = fonts
        .iter()
        .flat_map(|f| f.codepoint_ids().map(|(_, c)| c))
        .filter(|&c| !excluded(c))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    distinct_characters(codes.into_iter().map(|c| (c, c)), |code| {
        fonts.iter().filter_map(|f| render_base(f, code)).collect()
    })
}

/// The first [`MAX_CHARS`] candidates `(code, key)` that render (`styles(key)`: one canvas
/// per style that has the character) differently from every earlier one (compared in the
/// first style). Renders lazily: stops at the cap.
pub(super) fn distinct_characters<K>(
    candidates: impl IntoIterator<Item = (char, K)>,
    styles: impl Fn(K) -> Vec<Vec<u8>>,
) -> Vec<Character> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for (code, key) in candidates {
        if out.len() == MAX_CHARS {
            break;
        }
        let styles = styles(key);
        if let Some(first) = styles.first()
            && seen.insert(first.clone())
        {
            out.push(Character { code, styles });
        }
    }
    out
}

/// `code` drawn by `font`, its bounding box scaled to [`GLYPH_BOX`] and centred on the
/// canvas; `None` if the font lacks it or it is a mark (no advance) or small punctuation.
pub(super) fn render_base(font: &FontVec, code: char) -> Option<Vec<u8>> {
    let id = font.glyph_id(code);
    if id.0 == 0 || font.h_advance_unscaled(id) <= 0.0 {
        return None;
    }
    let outline = font.outline(id)?;
    let (w, h) = (
        outline.bounds.max.x - outline.bounds.min.x,
        outline.bounds.max.y - outline.bounds.min.y,
    );
    let em = font.units_per_em()?;
    if w.max(h) < MIN_EM_FRACTION * em {
        return None;
    }
    let px_per_unit = GLYPH_BOX / w.max(h);
    let scale = PxScale::from(px_per_unit * font.height_unscaled());
    let glyph = id.with_scale_and_position(scale, ab_glyph::point(0.0, 0.0));
    let og = font.outline_glyph(glyph)?;
    let b = og.px_bounds();
    let ox = ((CANVAS as f32 - b.width()) / 2.0).round() as i64;
    let oy = ((CANVAS as f32 - b.height()) / 2.0).round() as i64;
    let mut canvas = vec![0u8; CANVAS * CANVAS];
    let mut ink = 0.0;
    og.draw(|x, y, c| {
        let (cx, cy) = (x as i64 + ox, y as i64 + oy);
        if (0..CANVAS as i64).contains(&cx) && (0..CANVAS as i64).contains(&cy) {
            let v = (c.clamp(0.0, 1.0) * 255.0).round() as u8;
            let px = &mut canvas[cy as usize * CANVAS + cx as usize];
            *px = (*px).max(v);
            ink += c;
        }
    });
    (ink >= 20.0).then_some(canvas)
}
