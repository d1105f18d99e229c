//! `walvault window`, `walvault restore` and `walvault restores [drop ID]`: the restorable
//! window, a point-in-time restore into a directory or as an instance, and the restores
//! the server keeps.

use std::path::Path;

use serde_json::{json, Value};
use walvault_proto::pb::{self, restore_instance_response};
use walvault_proto::{ClusterId, Lsn};

use crate::cli::{ActionArg, RestoreArgs};
use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::{human_bytes, utc_time};
use crate::restore::recovery::Standby;
use crate::restore::tablespace::{self, TablespaceMapping};
use crate::restore::target::{self, utc_micros, Delivery, TargetFlags};
use crate::restore::{self, DirOptions, DirRestore, Request};

async fn client(
    config: &ClientConfig,
) -> Result<pb::restore_client::RestoreClient<tonic::transport::Channel>, ClientError> {
    Ok(pb::restore_client::RestoreClient::new(
        connect::channel(config).await?,
    ))
}

/// A restore command line, checked.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub request: Request,
    /// `None` only for a dry run without --to.
    pub delivery: Option<Delivery>,
    pub dir: DirOptions,
}

/// Checks a restore command line without touching anything.
pub fn parse(args: &RestoreArgs, cwd: &Path) -> Result<Parsed, ClientError> {
    let usage = |m: &str| Err(ClientError::Usage(m.to_owned()));
    let target = target::parse_target(&TargetFlags {
        time: args.time.as_deref(),
        lsn: args.lsn.as_deref(),
        xid: args.xid.as_deref(),
        name: args.name.as_deref(),
        immediate: args.immediate,
        latest: args.latest,
    })?;
    let timeline = match &args.timeline {
        Some(t) => target::parse_timeline(t)?,
        None => 0,
    };
    if args.exclusive && !target.is_point() {
        return usage(
            "--exclusive stops just before a target: give --time, --lsn, --xid or --name",
        );
    }
    let backup = match args.backup.as_deref().map(str::trim) {
        Some("") => return usage("--backup: give a backup id (walvault backups lists them)"),
        b => b.map(str::to_owned),
    };
    let action = match args.action {
        ActionArg::Promote => pb::RecoveryAction::Promote,
        ActionArg::Pause => pb::RecoveryAction::Pause,
        ActionArg::Shutdown => pb::RecoveryAction::Shutdown,
    };
    let delivery = match &args.to {
        Some(to) => Some(target::parse_delivery(to, cwd)?),
        None if args.dry_run => None,
        None => {
            return usage(
                "give --to dir:PATH (a data directory on this host) or --to instance (started \
                 on the server)",
            )
        }
    };
    if delivery == Some(Delivery::Instance) {
        let dir_only = [
            (args.delta, "--delta"),
            (!args.tablespace_map.is_empty(), "--tablespace-map"),
            (args.standby, "--standby"),
            (args.primary_conninfo.is_some(), "--primary-conninfo"),
            (args.restore_command.is_some(), "--restore-command"),
        ];
        if let Some((_, flag)) = dir_only.iter().find(|(set, _)| *set) {
            return Err(ClientError::Usage(format!(
                "{flag} is for --to dir:PATH only; an instance is set up by the server"
            )));
        }
    }
    let mut maps: Vec<TablespaceMapping> = Vec::new();
    for m in &args.tablespace_map {
        let m: TablespaceMapping = m.parse()?;
        if maps.iter().any(|o| o.old == m.old) {
            return Err(ClientError::Usage(format!(
                "--tablespace-map: {} is mapped twice",
                m.old.display()
            )));
        }
        maps.push(m);
    }
    if args.standby && target != target::Target::Latest {
        return usage(
            "--standby follows the archive to its end: give no target, or --latest (a standby \
             never stops at a time, LSN, xid or restore point)",
        );
    }
    if args.primary_conninfo.is_some() && !args.standby {
        return usage("--primary-conninfo goes with --standby");
    }
    let standby = args.standby.then(|| Standby {
        primary_conninfo: args.primary_conninfo.clone(),
    });
    let path = match &delivery {
        Some(Delivery::Dir(p)) => p.clone(),
        _ => Default::default(),
    };
    Ok(Parsed {
        request: Request {
            target,
            timeline,
            backup,
            action,
            exclusive: args.exclusive,
        },
        delivery,
        dir: DirOptions {
            path,
            delta: args.delta,
            tablespace_map: maps,
            standby,
            restore_command: args.restore_command.clone(),
            progress: !args.quiet && !args.json,
        },
    })
}

fn cwd() -> Result<std::path::PathBuf, ClientError> {
    std::env::current_dir().map_err(ClientError::io("find the current directory"))
}

/// Checks the command line before the configuration is even read.
pub fn check(args: &RestoreArgs) -> Result<(), ClientError> {
    parse(args, &cwd()?).map(|_| ())
}

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    args: &RestoreArgs,
) -> Result<(), ClientError> {
    let parsed = parse(args, &cwd()?)?;
    let cluster_ref = super::cluster_ref(config, cluster);
    let describe = super::describe(&cluster_ref);
    if args.dry_run {
        let context = format!("plan a restore of {describe}");
        let plan = client(config)
            .await?
            .plan(parsed.request.to_pb(cluster_ref))
            .await
            .map_err(ClientError::server(context))?
            .into_inner();
        return print_plan(&describe, &plan, &parsed, args.json);
    }
    match parsed.delivery {
        Some(Delivery::Dir(_)) => {
            let r = restore::run_dir(config, cluster, &parsed.request, &parsed.dir).await?;
            print_dir_restore(&describe, &r, args.json);
            Ok(())
        }
        _ => instance(config, cluster_ref, &describe, &parsed.request, args).await,
    }
}

async fn instance(
    config: &ClientConfig,
    cluster_ref: Option<pb::ClusterRef>,
    describe: &str,
    request: &Request,
    args: &RestoreArgs,
) -> Result<(), ClientError> {
    let context = format!("restore {describe} as an instance");
    let mut stream = client(config)
        .await?
        .restore_to_instance(request.to_pb(cluster_ref))
        .await
        .map_err(ClientError::server(context.clone()))?
        .into_inner();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(ClientError::server(context.clone()))?
    {
        match msg.part {
            Some(restore_instance_response::Part::Planned(p)) if !args.quiet => {
                eprintln!(
                    "walvault: restore {}: backup {}, target {}, timeline {}, about {} of WAL to \
                     replay",
                    p.restore_id,
                    p.backup_id,
                    p.target,
                    p.timeline,
                    human_bytes(p.wal_bytes)
                );
            }
            Some(restore_instance_response::Part::Progress(line)) if !args.quiet => {
                eprintln!("walvault: {line}");
            }
            Some(restore_instance_response::Part::Ready(info)) => {
                if args.json {
                    crate::outln!("{}", info_json(&info));
                } else {
                    let cluster = info
                        .cluster
                        .as_ref()
                        .map_or_else(|| describe.to_owned(), |c| cluster_name(Some(c)));
                    let reached = if info.reached_lsn != 0 {
                        format!(" (recovery reached {})", Lsn(info.reached_lsn))
                    } else {
                        String::new()
                    };
                    crate::outln!(
                        "restore {} of {cluster} is {}{reached}: {}",
                        info.id,
                        if info.state == "ready" {
                            "ready"
                        } else {
                            &info.state
                        },
                        info.conninfo
                    );
                }
                return Ok(());
            }
            _ => {}
        }
    }
    Err(ClientError::Integrity(format!(
        "{context}: the server ended the restore without saying it was ready"
    )))
}

fn settings_json(settings: &[(String, String)]) -> Value {
    Value::Object(
        settings
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn print_dir_restore(describe: &str, r: &DirRestore, json: bool) {
    let path = r.dirs.data().display().to_string();
    let duration_ms = r.elapsed.as_millis() as u64;
    if json {
        crate::outln!(
            "{}",
            json!({
                "restore_id": r.plan.restore_id,
                "backup_id": r.plan.backup_id,
                "path": path,
                "target": r.plan.target,
                "timeline": r.plan.timeline,
                "files": r.done.files,
                "bytes_sent": r.done.bytes_sent,
                "bytes_written": r.done.bytes_written,
                "blocks_sent": r.done.blocks_sent,
                "blocks_same": r.done.blocks_same,
                "bytes_total": r.plan.bytes_total,
                "deleted": r.written.deleted,
                "duration_ms": duration_ms,
                "settings": settings_json(&r.settings),
                "reach_lsn": Lsn(r.plan.reach_lsn).to_string(),
                "reach_time": time_text(r.plan.reach_micros),
                "through_segment": r.plan.through_segment,
            })
        );
        return;
    }
    let secs = r.elapsed.as_secs_f64().max(0.001);
    crate::outln!(
        "restored {describe} from backup {} into {path}: {} files, sent {} ({} of blocks), {} \
         blocks already there; start it with: pg_ctl -D {path} start",
        r.plan.backup_id,
        r.done.files,
        human_bytes(r.done.bytes_sent),
        human_bytes(r.done.bytes_written),
        r.done.blocks_same,
    );
    crate::outln!(
        "target: {} on timeline {}{}; {} local paths deleted; {:.1} s ({}/s written)",
        r.plan.target,
        r.plan.timeline,
        if r.standby { " (as a standby)" } else { "" },
        r.written.deleted,
        secs,
        human_bytes((r.done.bytes_written as f64 / secs) as u64),
    );
    for (oid, dir) in r.dirs.tablespaces() {
        crate::outln!("tablespace {oid} is at {}", dir.display());
    }
    if !r.standby {
        crate::outln!("{}", reach_text(&r.plan));
    }
}

/// What recovery must reach, and that it fails rather than ends early.
fn reach_text(plan: &pb::RestorePlan) -> String {
    let at = if plan.reach_micros != 0 {
        format!(" (commits up to {})", utc_micros(plan.reach_micros))
    } else {
        String::new()
    };
    format!(
        "recovery must replay WAL to at least {}{at}, through segment {}; if the archive cannot \
         give it, PostgreSQL stops with a FATAL instead of promoting early",
        Lsn(plan.reach_lsn),
        plan.through_segment
    )
}

fn print_plan(
    describe: &str,
    plan: &pb::RestorePlan,
    parsed: &Parsed,
    json: bool,
) -> Result<(), ClientError> {
    // For a directory, where each area would go (and whether the mappings fit).
    let dirs = match &parsed.delivery {
        Some(Delivery::Dir(path)) => Some(tablespace::place_areas(
            &plan.areas,
            path,
            &parsed.dir.tablespace_map,
        )?),
        _ => None,
    };
    let dir_of = |area: &str| -> Option<String> {
        let a = area.parse().ok()?;
        dirs.as_ref()?.dir_of(a).map(|d| d.display().to_string())
    };
    let settings: Vec<(String, String)> = plan
        .settings
        .iter()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    if json {
        let areas: Vec<Value> = plan
            .areas
            .iter()
            .map(|a| {
                json!({
                    "area": a.area,
                    "location": a.location,
                    "dir": dir_of(&a.area),
                })
            })
            .collect();
        crate::outln!(
            "{}",
            json!({
                "restore_id": plan.restore_id,
                "backup_id": plan.backup_id,
                "backup_timeline": plan.backup_timeline,
                "backup_stop_lsn": Lsn(plan.backup_stop_lsn).to_string(),
                "backup_consistent_micros": plan.backup_consistent_micros,
                "backup_consistent_time": time_text(plan.backup_consistent_micros),
                "timeline": plan.timeline,
                "target": plan.target,
                "settings": settings_json(&settings),
                "areas": areas,
                "wal_bytes": plan.wal_bytes,
                "bytes_total": plan.bytes_total,
                "files_total": plan.files_total,
                "pg_major": plan.pg_major,
                "reach_lsn": Lsn(plan.reach_lsn).to_string(),
                "reach_time": time_text(plan.reach_micros),
                "through_segment": plan.through_segment,
            })
        );
        return Ok(());
    }
    crate::outln!("restore of {describe} (dry run: nothing was done)");
    crate::outln!(
        "  backup    {} (PostgreSQL {}, timeline {}, stop LSN {}, consistent at {})",
        plan.backup_id,
        plan.pg_major,
        plan.backup_timeline,
        Lsn(plan.backup_stop_lsn),
        time_or_dash(plan.backup_consistent_micros)
    );
    crate::outln!("  target    {} on timeline {}", plan.target, plan.timeline);
    crate::outln!("  replay    about {} of WAL", human_bytes(plan.wal_bytes));
    crate::outln!("  reach     {}", reach_text(plan));
    crate::outln!(
        "  size      {} in {} files",
        human_bytes(plan.bytes_total),
        plan.files_total
    );
    for a in &plan.areas {
        let from = if a.location.is_empty() {
            String::new()
        } else {
            format!(" (was {})", a.location)
        };
        match dir_of(&a.area) {
            Some(d) => crate::outln!("  {:<9} {d}{from}", a.area),
            None => crate::outln!("  {:<9}{from}", a.area),
        }
    }
    for (name, value) in &settings {
        crate::outln!("  setting   {name} = '{}'", value.replace('\'', "''"));
    }
    Ok(())
}

/// A time for JSON: the UTC text, empty when unknown (0), like the other string fields.
fn time_text(micros: i64) -> String {
    if micros == 0 {
        String::new()
    } else {
        utc_micros(micros)
    }
}

fn time_or_dash(micros: i64) -> String {
    if micros == 0 {
        "-".into()
    } else {
        utc_micros(micros)
    }
}

pub async fn window(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    json: bool,
) -> Result<(), ClientError> {
    let cluster = super::cluster_ref(config, cluster);
    let context = format!(
        "read the restorable window of {}",
        super::describe(&cluster)
    );
    let timelines = client(config)
        .await?
        .window(pb::WindowRequest { cluster })
        .await
        .map_err(ClientError::server(context))?
        .into_inner()
        .timelines;
    if json {
        let rows: Vec<Value> = timelines.iter().map(window_json).collect();
        crate::outln!("{}", Value::Array(rows));
        return Ok(());
    }
    crate::outln!(
        "{:>3} {:>6} {:>12} {:<18} {:<42} {:<42} {:>12} {:>7} {:>8}",
        "TL",
        "PARENT",
        "SWITCH LSN",
        "OLDEST BACKUP",
        "FROM",
        "LAST COMMIT",
        "END LSN",
        "BACKUPS",
        "SEGMENTS"
    );
    for t in &timelines {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        let point = |lsn: u64, micros: i64| {
            if lsn == 0 && micros == 0 {
                "-".to_owned()
            } else {
                format!("{} {}", Lsn(lsn), time_or_dash(micros))
            }
        };
        crate::outln!(
            "{:>3} {:>6} {:>12} {:<18} {:<42} {:<42} {:>12} {:>7} {:>8}",
            t.timeline,
            if t.parent == 0 {
                "-".to_owned()
            } else {
                t.parent.to_string()
            },
            if t.switch_lsn == 0 {
                "-".to_owned()
            } else {
                Lsn(t.switch_lsn).to_string()
            },
            dash(&t.oldest_backup),
            point(t.from_lsn, t.from_micros),
            point(t.last_commit_lsn, t.last_commit_micros),
            Lsn(t.end_lsn).to_string(),
            t.backups,
            t.segments,
        );
        if t.spans.len() > 1 {
            for s in &t.spans {
                crate::outln!(
                    "    restorable from {} to {}{}",
                    point(s.from_lsn, s.from_micros),
                    point(s.last_commit_lsn, s.last_commit_micros),
                    if s.until_hole.is_empty() {
                        String::new()
                    } else {
                        format!(" (WAL up to {}, then a hole)", Lsn(s.end_lsn))
                    }
                );
            }
        }
        for h in &t.holes {
            crate::outln!("    {}", super::wal_list::hole_line(h));
        }
        for u in &t.unreadable {
            crate::outln!(
                "    UNREADABLE {}: {} (its commits are unknown to the planner)",
                u.name,
                u.reason
            );
        }
    }
    if timelines.is_empty() {
        crate::outln!("nothing to restore yet: no backup with its WAL archived");
    }
    Ok(())
}

fn window_json(t: &pb::TimelineWindow) -> Value {
    json!({
        "timeline": t.timeline,
        "parent": t.parent,
        "switch_lsn": Lsn(t.switch_lsn).to_string(),
        "oldest_backup": t.oldest_backup,
        "from_lsn": Lsn(t.from_lsn).to_string(),
        "from_micros": t.from_micros,
        "from_time": time_text(t.from_micros),
        "last_commit_lsn": Lsn(t.last_commit_lsn).to_string(),
        "last_commit_micros": t.last_commit_micros,
        "last_commit_time": time_text(t.last_commit_micros),
        "end_lsn": Lsn(t.end_lsn).to_string(),
        "backups": t.backups,
        "segments": t.segments,
        "spans": t.spans.iter().map(|s| json!({
            "from_backup": s.from_backup,
            "from_lsn": Lsn(s.from_lsn).to_string(),
            "from_micros": s.from_micros,
            "from_time": time_text(s.from_micros),
            "last_commit_lsn": Lsn(s.last_commit_lsn).to_string(),
            "last_commit_micros": s.last_commit_micros,
            "last_commit_time": time_text(s.last_commit_micros),
            "end_lsn": Lsn(s.end_lsn).to_string(),
            "backups": s.backups,
            "segments": s.segments,
            "until_hole": (!s.until_hole.is_empty()).then_some(&s.until_hole),
        })).collect::<Vec<_>>(),
        "holes": t.holes.iter().map(super::wal_list::hole_json).collect::<Vec<_>>(),
        "unreadable": t.unreadable.iter().map(|u| json!({
            "name": u.name,
            "reason": u.reason,
        })).collect::<Vec<_>>(),
    })
}

fn cluster_name(c: Option<&pb::ClusterRef>) -> String {
    c.map_or_else(String::new, |c| format!("{}/{}", c.tenant, c.cluster))
}

fn info_json(r: &pb::RestoreInfo) -> Value {
    json!({
        "id": r.id,
        "cluster": cluster_name(r.cluster.as_ref()),
        "backup_id": r.backup_id,
        "target": r.target,
        "delivery": r.delivery,
        "state": r.state,
        "conninfo": r.conninfo,
        "port": r.port,
        "created_unix": r.created_unix,
        "duration_ms": r.duration_ms,
        "clone_bytes": r.clone_bytes,
        "host": r.host,
        "path": r.path,
        "detail": r.detail,
        "timeline": r.timeline,
        "reached_lsn": (r.reached_lsn != 0).then(|| Lsn(r.reached_lsn).to_string()),
        "reached_time": time_text(r.reached_micros),
    })
}

pub async fn list(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    json: bool,
) -> Result<(), ClientError> {
    let cluster = super::cluster_ref(config, cluster);
    let context = match &cluster {
        Some(_) => format!("list the restores of {}", super::describe(&cluster)),
        None => "list restores".to_owned(),
    };
    let restores = client(config)
        .await?
        .list_restores(pb::ListRestoresRequest { cluster })
        .await
        .map_err(ClientError::server(context))?
        .into_inner()
        .restores;
    if json {
        let rows: Vec<Value> = restores.iter().map(info_json).collect();
        crate::outln!("{}", Value::Array(rows));
        return Ok(());
    }
    crate::outln!(
        "{:<22} {:<24} {:<9} {:<11} {:<18} {:<38} {:<56} {:<23} {:>10}",
        "ID",
        "CLUSTER",
        "DELIVERY",
        "STATE",
        "BACKUP",
        "TARGET",
        "CONNINFO/PATH",
        "CREATED",
        "CLONE"
    );
    for r in &restores {
        let at = if r.delivery == "dir" {
            if r.host.is_empty() {
                r.path.clone()
            } else {
                format!("{}:{}", r.host, r.path)
            }
        } else {
            r.conninfo.clone()
        };
        crate::outln!(
            "{:<22} {:<24} {:<9} {:<11} {:<18} {:<38} {:<56} {:<23} {:>10}",
            r.id,
            cluster_name(r.cluster.as_ref()),
            r.delivery,
            r.state,
            r.backup_id,
            r.target,
            at,
            utc_time(r.created_unix),
            human_bytes(r.clone_bytes),
        );
        if !r.detail.is_empty() {
            crate::outln!("    {}", r.detail);
        }
    }
    crate::outln!("{} restores", restores.len());
    Ok(())
}

pub async fn drop(config: &ClientConfig, id: &str, json: bool) -> Result<(), ClientError> {
    let info = client(config)
        .await?
        .drop_restore(pb::DropRestoreRequest { id: id.to_owned() })
        .await
        .map_err(ClientError::server(format!("drop restore {id}")))?
        .into_inner();
    if json {
        crate::outln!("{}", info_json(&info));
    } else {
        crate::outln!(
            "dropped restore {} of {} ({})",
            info.id,
            cluster_name(info.cluster.as_ref()),
            info.state
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::restore::target::Target;
    use clap::Parser;

    fn parse_line(line: &[&str]) -> Result<Parsed, ClientError> {
        let argv = [&["walvault", "restore"], line].concat();
        let cli = Cli::try_parse_from(argv).expect("clap accepts the line");
        let Command::Restore(args) = cli.command else {
            panic!("not a restore");
        };
        parse(&args, Path::new("/home/pg"))
    }

    fn refused(line: &[&str], needle: &str) {
        let e = parse_line(line).expect_err(&line.join(" ")).to_string();
        assert!(e.contains(needle), "{line:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn a_directory_restore_line() {
        let p = parse_line(&[
            "--time",
            "2026-11-22 10:03:00",
            "--timeline",
            "2",
            "--action",
            "pause",
            "--exclusive",
            "--to",
            "dir:restored",
            "--tablespace-map",
            "/srv/ts1=/new/ts1",
        ])
        .unwrap();
        assert_eq!(p.request.target, Target::Time(1_795_341_780_000_000));
        assert_eq!(p.request.timeline, 2);
        assert_eq!(p.request.action, pb::RecoveryAction::Pause);
        assert!(p.request.exclusive);
        assert_eq!(p.delivery, Some(Delivery::Dir("/home/pg/restored".into())));
        assert_eq!(p.dir.path, Path::new("/home/pg/restored"));
        assert_eq!(p.dir.tablespace_map.len(), 1);
        let wire = p.request.to_pb(None);
        assert_eq!(wire.timeline, 2);
        assert_eq!(wire.action, pb::RecoveryAction::Pause as i32);
        assert!(wire.backup.is_empty());
    }

    #[test]
    fn defaults_are_latest_promote() {
        let p = parse_line(&["--to", "instance"]).unwrap();
        assert_eq!(p.request.target, Target::Latest);
        assert_eq!(p.request.timeline, 0);
        assert_eq!(p.request.action, pb::RecoveryAction::Promote);
        let p = parse_line(&["--dry-run", "--lsn", "0/3000028"]).unwrap();
        assert_eq!(p.delivery, None);
        let p = parse_line(&[
            "--standby",
            "--delta",
            "--primary-conninfo",
            "host=p",
            "--to",
            "dir:/d",
        ])
        .unwrap();
        assert_eq!(
            p.dir.standby.unwrap().primary_conninfo.as_deref(),
            Some("host=p")
        );
    }

    #[test]
    fn bad_lines_are_refused_in_one_line() {
        refused(&["--to", "dir:/d", "--time", "yesterday"], "is not a time");
        refused(&["--to", "dir:/d", "--lsn", "3000028"], "is not an LSN");
        refused(
            &["--to", "dir:/d", "--xid", "5", "--name", "x"],
            "--xid and --name",
        );
        refused(&["--to", "nfs:/x"], "dir:PATH");
        refused(&["--time", "2026-11-22 10:03:00"], "give --to");
        refused(
            &["--to", "instance", "--delta"],
            "--delta is for --to dir:PATH",
        );
        refused(
            &["--to", "instance", "--tablespace-map", "/a=/b"],
            "--tablespace-map is for",
        );
        refused(&["--to", "dir:/d", "--tablespace-map", "/a"], "OLD=NEW");
        refused(&["--to", "dir:/d", "--tablespace-map", "a=/b"], "relative");
        refused(
            &[
                "--to",
                "dir:/d",
                "--tablespace-map",
                "/a=/b",
                "--tablespace-map",
                "/a/=/c",
            ],
            "mapped twice",
        );
        refused(
            &["--to", "dir:/d", "--standby", "--immediate"],
            "--standby follows",
        );
        refused(
            &["--to", "dir:/d", "--primary-conninfo", "host=x"],
            "goes with --standby",
        );
        refused(&["--to", "dir:/d", "--exclusive"], "--exclusive");
        refused(&["--to", "dir:/d", "--timeline", "x"], "--timeline");
        refused(&["--to", "dir:/d", "--backup", ""], "--backup");
    }

    #[test]
    fn window_json_has_strings_for_lsns_and_times() {
        let t = pb::TimelineWindow {
            timeline: 2,
            parent: 1,
            switch_lsn: 0x300_00A0,
            oldest_backup: "b1".into(),
            from_lsn: 0x200_0100,
            from_micros: 1_795_341_780_000_000,
            last_commit_lsn: 0x500_0000,
            last_commit_micros: 0,
            end_lsn: 0x600_0000,
            backups: 1,
            segments: 4,
            ..Default::default()
        };
        let v = window_json(&t);
        assert_eq!(v["switch_lsn"], "0/30000A0");
        assert_eq!(v["from_time"], "2026-11-22 10:03:00 UTC");
        assert_eq!(v["from_micros"], 1_795_341_780_000_000i64);
        assert_eq!(v["last_commit_time"], "");
    }
}
