//! Where each area of a snapshot goes on this host: PGDATA to PATH, each tablespace to its
//! original location or, with `--tablespace-map OLD=NEW`, to NEW; and the `tablespace_map`
//! that tells recovery where the tablespaces now are.
//!
//! Every mapping must match a tablespace of the snapshot and no two areas may share a
//! directory: both are checked before anything is written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use walvault_proto::{pb, Area};

use crate::error::ClientError;

/// One `--tablespace-map OLD=NEW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceMapping {
    pub old: PathBuf,
    pub new: PathBuf,
}

impl FromStr for TablespaceMapping {
    type Err = ClientError;

    /// `OLD=NEW`, both absolute; a `=` inside a path is written `\=` (as pg_basebackup has it).
    fn from_str(s: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| {
            ClientError::Usage(format!(
                "--tablespace-map {s:?}: {why} (give OLD=NEW, two absolute paths; write a '=' \
                 inside a path as '\\=')"
            ))
        };
        let mut old = String::new();
        let mut new = None::<String>;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            let c = match c {
                '\\' if chars.peek() == Some(&'=') => {
                    chars.next();
                    '='
                }
                '=' if new.is_none() => {
                    new = Some(String::new());
                    continue;
                }
                '=' => return Err(bad("more than one unescaped '='")),
                c => c,
            };
            new.as_mut().unwrap_or(&mut old).push(c);
        }
        let new = new.ok_or_else(|| bad("no '='"))?;
        if old.is_empty() || new.is_empty() {
            return Err(bad("an empty path"));
        }
        let (old, new) = (PathBuf::from(old), PathBuf::from(new));
        if !old.is_absolute() || !new.is_absolute() {
            return Err(bad("a relative path"));
        }
        Ok(Self {
            old: super::target::absolute(&old, Path::new("/")),
            new: super::target::absolute(&new, Path::new("/")),
        })
    }
}

/// One area of the snapshot and the directory it is written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaDir {
    pub area: Area,
    pub dir: PathBuf,
    /// Where it was on the source host (empty for data).
    pub location: String,
}

/// The target directory of every area, data first, then tablespaces by area order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaDirs(Vec<AreaDir>);

impl AreaDirs {
    pub fn iter(&self) -> impl Iterator<Item = &AreaDir> {
        self.0.iter()
    }

    pub fn dir_of(&self, area: Area) -> Option<&Path> {
        self.0
            .iter()
            .find(|a| a.area == area)
            .map(|a| a.dir.as_path())
    }

    pub fn data(&self) -> &Path {
        self.dir_of(Area::Data).unwrap_or(Path::new("/"))
    }

    pub fn tablespaces(&self) -> impl Iterator<Item = (u32, &Path)> {
        self.0.iter().filter_map(|a| match a.area {
            Area::Tablespace(oid) => Some((oid, a.dir.as_path())),
            Area::Data => None,
        })
    }

    /// True when `dir` is the directory of an area other than `area` (the walk of one area
    /// must not descend into another's, e.g. a tablespace kept inside PGDATA).
    pub fn is_other_area(&self, area: Area, dir: &Path) -> bool {
        self.0.iter().any(|a| a.area != area && a.dir == dir)
    }

    /// For tests and the walk: areas from explicit directories.
    pub fn from_dirs(dirs: Vec<(Area, PathBuf)>) -> Self {
        let mut v: Vec<AreaDir> = dirs
            .into_iter()
            .map(|(area, dir)| AreaDir {
                area,
                dir,
                location: String::new(),
            })
            .collect();
        v.sort_by_key(|a| a.area);
        Self(v)
    }
}

/// Places the areas of a plan: data at `pgdata`, each tablespace at the NEW of the mapping
/// whose OLD is its location, else at its location.
pub fn place_areas(
    areas: &[pb::Area],
    pgdata: &Path,
    maps: &[TablespaceMapping],
) -> Result<AreaDirs, ClientError> {
    let mut out = Vec::new();
    for a in areas {
        let area: Area = a.area.parse().map_err(|e| {
            ClientError::Integrity(format!("the server planned an unknown area: {e}"))
        })?;
        let dir = match area {
            Area::Data => pgdata.to_owned(),
            Area::Tablespace(_) => {
                let location = Path::new(&a.location);
                match maps.iter().find(|m| m.old == location) {
                    Some(m) => m.new.clone(),
                    None if location.is_absolute() => {
                        super::target::absolute(location, Path::new("/"))
                    }
                    None => {
                        return Err(ClientError::Usage(format!(
                            "tablespace {area} was at {:?} on the source, not an absolute \
                             path; this client cannot place it",
                            a.location
                        )))
                    }
                }
            }
        };
        out.push(AreaDir {
            area,
            dir,
            location: a.location.clone(),
        });
    }
    out.sort_by_key(|a| a.area);
    if out.first().map(|a| a.area) != Some(Area::Data) {
        return Err(ClientError::Integrity(
            "the server planned a restore without a data directory".into(),
        ));
    }
    for pair in out.windows(2) {
        if pair[0].area == pair[1].area {
            return Err(ClientError::Integrity(format!(
                "the server planned area {} twice",
                pair[0].area
            )));
        }
    }
    for m in maps {
        if !out
            .iter()
            .any(|a| a.area != Area::Data && Path::new(&a.location) == m.old)
        {
            let locations: Vec<String> = out
                .iter()
                .filter(|a| a.area != Area::Data)
                .map(|a| format!("{} ({})", a.location, a.area))
                .collect();
            let had = if locations.is_empty() {
                "the backup has no tablespaces".to_owned()
            } else {
                format!("its tablespaces were at {}", locations.join(", "))
            };
            return Err(ClientError::Usage(format!(
                "--tablespace-map {}={}: no tablespace of the backup was at {}; {had}",
                m.old.display(),
                m.new.display(),
                m.old.display()
            )));
        }
    }
    for (i, a) in out.iter().enumerate() {
        for b in &out[i + 1..] {
            if a.dir == b.dir {
                return Err(ClientError::Usage(format!(
                    "{} and {} would both be written to {}; give --tablespace-map OLD=NEW to \
                     put the tablespace elsewhere",
                    a.area,
                    b.area,
                    a.dir.display()
                )));
            }
        }
        if a.area != Area::Data {
            let text = a.dir.to_string_lossy();
            if text.contains(['\n', '\r', '\\']) || a.dir.to_str().is_none() {
                return Err(ClientError::Usage(format!(
                    "tablespace {} cannot go to {:?}: tablespace_map cannot carry that name",
                    a.area, text
                )));
            }
        }
    }
    Ok(AreaDirs(out))
}

/// The `tablespace_map` for the placed areas (`<oid> <path>` per line, by OID), or `None` when
/// the snapshot has no tablespaces.
pub fn tablespace_map(dirs: &AreaDirs) -> Option<String> {
    let mut lines: Vec<(u32, &Path)> = dirs.tablespaces().collect();
    if lines.is_empty() {
        return None;
    }
    lines.sort_by_key(|(oid, _)| *oid);
    let mut out = String::new();
    for (oid, dir) in lines {
        let _ = writeln!(out, "{oid} {}", dir.display());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(area: &str, location: &str) -> pb::Area {
        pb::Area {
            area: area.into(),
            location: location.into(),
        }
    }

    fn map(s: &str) -> TablespaceMapping {
        s.parse().unwrap()
    }

    #[test]
    fn mappings_parse() {
        assert_eq!(
            map("/srv/ts1=/data/ts1"),
            TablespaceMapping {
                old: "/srv/ts1".into(),
                new: "/data/ts1".into()
            }
        );
        assert_eq!(map("/a\\=b/=/c/").old, PathBuf::from("/a=b"));
        assert_eq!(map("/a/./b/=/c/../d").new, PathBuf::from("/d"));
        for bad in ["/a", "/a=", "=/b", "a=/b", "/a=b", "/a=/b=/c", ""] {
            let e = bad.parse::<TablespaceMapping>().unwrap_err().to_string();
            assert!(e.contains("OLD=NEW"), "{bad}: {e}");
        }
    }

    #[test]
    fn areas_go_to_their_location_or_the_mapped_one() {
        let plan = [
            area("tblspc/16401", "/srv/ts2"),
            area("data", ""),
            area("tblspc/16400", "/srv/ts1/"),
        ];
        let dirs = place_areas(
            &plan,
            Path::new("/restore/data"),
            &[map("/srv/ts1=/new/ts1")],
        )
        .unwrap();
        let got: Vec<(String, PathBuf)> = dirs
            .iter()
            .map(|a| (a.area.to_string(), a.dir.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("data".to_owned(), PathBuf::from("/restore/data")),
                ("tblspc/16400".to_owned(), PathBuf::from("/new/ts1")),
                ("tblspc/16401".to_owned(), PathBuf::from("/srv/ts2")),
            ]
        );
        assert_eq!(
            tablespace_map(&dirs).unwrap(),
            "16400 /new/ts1\n16401 /srv/ts2\n"
        );
        assert!(dirs.is_other_area(Area::Data, Path::new("/new/ts1")));
        assert!(!dirs.is_other_area(Area::Tablespace(16400), Path::new("/new/ts1")));
    }

    #[test]
    fn a_mapping_that_matches_nothing_names_the_locations() {
        let plan = [area("data", ""), area("tblspc/16400", "/srv/ts1")];
        let e = place_areas(&plan, Path::new("/r"), &[map("/srv/tsX=/new")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/srv/tsX") && e.contains("/srv/ts1 (tblspc/16400)"),
            "{e}"
        );
        let e = place_areas(&plan[..1], Path::new("/r"), &[map("/srv/ts1=/new")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tablespaces"), "{e}");
    }

    #[test]
    fn two_areas_never_share_a_directory() {
        let plan = [
            area("data", ""),
            area("tblspc/16400", "/srv/ts1"),
            area("tblspc/16401", "/srv/ts2"),
        ];
        assert!(place_areas(&plan, Path::new("/r"), &[map("/srv/ts1=/srv/ts2")]).is_err());
        assert!(place_areas(&plan, Path::new("/srv/ts1"), &[]).is_err());
        let e = place_areas(
            &[area("data", ""), area("tblspc/1", "rel")],
            Path::new("/r"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
        assert!(place_areas(&[area("tblspc/1", "/a")], Path::new("/r"), &[]).is_err());
        assert!(place_areas(&[area("base", "")], Path::new("/r"), &[]).is_err());
    }

    #[test]
    fn no_tablespaces_no_map() {
        let dirs = place_areas(&[area("data", "")], Path::new("/r"), &[]).unwrap();
        assert_eq!(tablespace_map(&dirs), None);
    }
}
