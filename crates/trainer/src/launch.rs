//! Which process this is in a one-process-per-GPU launch: rank, world size,
//! local rank and where rank 0 waits for the others, read from the
//! launcher's environment variables, with explicit flags over them.
//!
//! Sources, in order of precedence for each value:
//! 1. flags ([`LaunchFlags`]);
//! 2. torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//!    `MASTER_PORT`;
//! 3. SLURM's `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` and the first
//!    host of `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`), with
//!    `MASTER_ADDR`/`MASTER_PORT` over those when set.
//!
//! torchrun wins over SLURM because `srun torchrun …` is the usual way to
//! run torchrun in a SLURM job: there SLURM's variables describe the one
//! task per node and torchrun's the process per GPU this is.
//! Without either, the run is one process (rank 0 of 1).
//!
//! The environment is an argument (not read here) so tests stay hermetic;
//! [`process_env`] gives the real one.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};

/// torchrun's default rendezvous port, used when nothing names one.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// The flags that set rank, world size and local rank, named in errors.
const FLAG_NAMES: [&str; 3] = ["--rank", "--world-size", "--local-rank"];

/// Where the rank, world size and address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher variables: a single process.
    Single,
    Torchrun,
    Slurm,
}

/// This process's place in a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This process in `0..world_size`; rank 0 hosts the rendezvous and
    /// writes checkpoints and metrics.
    pub rank: usize,
    /// Processes in the run (one per GPU).
    pub world_size: usize,
    /// This process among those on its node: the GPU it uses.
    pub local_rank: usize,
    /// Host where rank 0 listens.
    pub master_addr: String,
    /// Port where rank 0 listens.
    pub master_port: u16,
    /// Which launcher's variables were read (flags may have overridden
    /// some of them).
    pub launcher: Launcher,
}

/// Values given on the command line; each one set overrides the
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchFlags {
    pub rank: Option<usize>,
    pub world_size: Option<usize>,
    pub local_rank: Option<usize>,
    pub master_addr: Option<String>,
    pub master_port: Option<u16>,
}

/// The process's environment variables (the non-Unicode ones left out).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

impl LaunchEnv {
    /// Reads the launch from `env` (variable name to value) and `flags`.
    pub fn discover(env: &HashMap<String, String>, flags: &LaunchFlags) -> Result<Self> {
        let vars = Vars(env);
        let launcher = if vars.has("RANK") || vars.has("WORLD_SIZE") {
            Launcher::Torchrun
        } else if vars.has("SLURM_PROCID") {
            Launcher::Slurm
        } else {
            Launcher::Single
        };
        // Each of rank, world size and local rank, with the name of where
        // it came from (for errors).
        let variables = match launcher {
            Launcher::Single => None,
            Launcher::Torchrun => Some(["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
            Launcher::Slurm => Some(["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"]),
        };
        let flag_values = [flags.rank, flags.world_size, flags.local_rank];
        let mut picked = [(0, ""); 3];
        for (index, slot) in picked.iter_mut().enumerate() {
            *slot = match (flag_values[index], variables) {
                (Some(value), _) => (value, FLAG_NAMES[index]),
                (None, Some(names)) => (vars.number(names[index])?, names[index]),
                (None, None) => ([0, 1, 0][index], FLAG_NAMES[index]),
            };
        }
        let [(rank, rank_source), (world_size, world_source), (local_rank, local_source)] = picked;
        if world_size == 0 {
            bail!("{world_source} is 0: a run needs at least one process");
        }
        if rank >= world_size {
            bail!(
                "{rank_source}={rank} is not below {world_source}={world_size}: ranks count from 0"
            );
        }
        if local_rank > rank {
            bail!("{local_source}={local_rank} is above {rank_source}={rank}: a node's processes are a subset of the run's");
        }
        let master_addr = match (&flags.master_addr, vars.get("MASTER_ADDR"), launcher) {
            (Some(addr), _, _) => addr.clone(),
            (None, Some(addr), _) => addr.to_string(),
            (None, None, Launcher::Slurm) => {
                let (variable, list) = ["SLURM_JOB_NODELIST", "SLURM_NODELIST"]
                    .into_iter()
                    .find_map(|name| Some((name, vars.get(name)?)))
                    .ok_or_else(|| {
                        anyhow!("SLURM_PROCID is set but neither SLURM_JOB_NODELIST nor SLURM_NODELIST: set MASTER_ADDR to rank 0's host")
                    })?;
                first_host(list).with_context(|| format!("reading {variable}={list:?}"))?
            }
            (None, None, Launcher::Torchrun) => {
                bail!("RANK/WORLD_SIZE are set but MASTER_ADDR is not: set it to rank 0's host")
            }
            (None, None, Launcher::Single) => "127.0.0.1".to_string(),
        };
        let master_port = match (flags.master_port, vars.get("MASTER_PORT")) {
            (Some(port), _) => port,
            (None, Some(text)) => text
                .trim()
                .parse()
                .map_err(|_| anyhow!("MASTER_PORT={text:?} is not a port number (1-65535)"))?,
            (None, None) => DEFAULT_MASTER_PORT,
        };
        Ok(LaunchEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            launcher,
        })
    }

    /// `master_addr:master_port`.
    pub fn master_address(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

/// Environment lookups that name the variable in their errors.
struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn number(&self, name: &str) -> Result<usize> {
        let text = self.get(name).ok_or_else(|| {
            anyhow!("{name} is not set: the launcher sets it, or pass it as a flag")
        })?;
        text.trim()
            .parse()
            .map_err(|_| anyhow!("{name}={text:?} is not a whole number"))
    }
}

/// The first host of a SLURM host list: `gpu[01-04,07]` gives `gpu01`,
/// `a,b` gives `a`, `rack[2-3]-n[5-6]` gives `rack2-n5`.
pub fn first_host(list: &str) -> Result<String> {
    let mut host = String::new();
    let mut rest = list.trim();
    loop {
        let stop = rest.find([',', '[']).unwrap_or(rest.len());
        host.push_str(&rest[..stop]);
        rest = &rest[stop..];
        if !rest.starts_with('[') {
            break;
        }
        let close = rest
            .find(']')
            .ok_or_else(|| anyhow!("the host list {list:?} has a '[' without its ']'"))?;
        let first = rest[1..close]
            .split([',', '-'])
            .next()
            .filter(|first| !first.is_empty() && first.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| {
                anyhow!("the host list {list:?} has a range that does not start with a number")
            })?;
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    if host.is_empty() {
        bail!("the host list {list:?} names no host");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn discover(pairs: &[(&str, &str)]) -> Result<LaunchEnv> {
        LaunchEnv::discover(&env(pairs), &LaunchFlags::default())
    }

    #[test]
    fn first_hosts_of_slurm_host_lists() {
        for (list, first) in [
            ("gpu[01-04,07]", "gpu01"),
            ("gpu[07,01-04]", "gpu07"),
            ("a,b", "a"),
            ("node-3", "node-3"),
            ("rack[2-3]-n[5-6],other", "rack2-n5"),
            ("n[009-012].ib", "n009.ib"),
        ] {
            assert_eq!(first_host(list).unwrap(), first, "{list}");
        }
        for bad in ["", "gpu[01-04", "gpu[]", "gpu[a-b]"] {
            assert!(first_host(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn torchrun_variables() {
        let launch = discover(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(
            launch,
            LaunchEnv {
                rank: 5,
                world_size: 8,
                local_rank: 1,
                master_addr: "10.0.0.2".into(),
                master_port: 1234,
                launcher: Launcher::Torchrun,
            }
        );
        assert_eq!(launch.master_address(), "10.0.0.2:1234");
    }

    #[test]
    fn slurm_variables_take_the_first_node_and_the_default_port() {
        let launch = discover(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[03-04]"),
            ("SLURM_NODELIST", "ignored"),
        ])
        .unwrap();
        assert_eq!(
            (launch.rank, launch.world_size, launch.local_rank),
            (6, 8, 2)
        );
        assert_eq!(launch.master_addr, "gpu03");
        assert_eq!(launch.master_port, DEFAULT_MASTER_PORT);
        assert_eq!(launch.launcher, Launcher::Slurm);

        let older = discover(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODELIST", "a,b"),
            ("MASTER_PORT", "40000"),
        ])
        .unwrap();
        assert_eq!(
            (older.master_addr.as_str(), older.master_port),
            ("a", 40000)
        );
    }

    #[test]
    fn torchrun_inside_slurm_wins() {
        let launch = discover(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "gpu[01-02]"),
            ("RANK", "3"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "gpu01"),
        ])
        .unwrap();
        assert_eq!(launch.launcher, Launcher::Torchrun);
        assert_eq!(
            (launch.rank, launch.world_size, launch.local_rank),
            (3, 16, 3)
        );
    }

    #[test]
    fn flags_override_the_environment() {
        let flags = LaunchFlags {
            rank: Some(1),
            master_addr: Some("head".into()),
            master_port: Some(7000),
            ..Default::default()
        };
        let vars = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "elsewhere"),
            ("MASTER_PORT", "1"),
        ]);
        let launch = LaunchEnv::discover(&vars, &flags).unwrap();
        assert_eq!(launch.rank, 1);
        assert_eq!(launch.master_address(), "head:7000");
        // Flags alone describe a launch too.
        let alone = LaunchFlags {
            world_size: Some(4),
            rank: Some(3),
            local_rank: Some(3),
            ..Default::default()
        };
        let launch = LaunchEnv::discover(&HashMap::new(), &alone).unwrap();
        assert_eq!((launch.rank, launch.world_size), (3, 4));
    }

    #[test]
    fn no_launcher_is_one_process() {
        let launch = discover(&[("PATH", "/bin")]).unwrap();
        assert_eq!(
            (launch.rank, launch.world_size, launch.local_rank),
            (0, 1, 0)
        );
        assert_eq!(launch.launcher, Launcher::Single);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let torchrun = [("LOCAL_RANK", "0"), ("MASTER_ADDR", "h")];
        let cases: [(Vec<(&str, &str)>, &str); 6] = [
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2")],
                "RANK=2 is not below WORLD_SIZE=2",
            ),
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\""),
            (vec![("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE is 0"),
            (vec![("RANK", "0")], "WORLD_SIZE is not set"),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_PORT", "99999")],
                "MASTER_PORT=\"99999\"",
            ),
            (
                vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "-1")],
                "SLURM_NTASKS=\"-1\"",
            ),
        ];
        for (mut pairs, expected) in cases {
            if pairs[0].0 == "RANK" {
                pairs.extend(torchrun);
            } else {
                pairs.extend([("SLURM_LOCALID", "0"), ("SLURM_NODELIST", "n1")]);
            }
            let error = discover(&pairs).unwrap_err().to_string();
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
        let from_flag = LaunchEnv::discover(
            &env(&[("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")]),
            &LaunchFlags {
                world_size: Some(1),
                master_addr: Some("h".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            from_flag
                .to_string()
                .contains("RANK=1 is not below --world-size=1"),
            "{from_flag}"
        );
        let local = discover(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap_err();
        assert!(
            local.to_string().contains("LOCAL_RANK=1 is above RANK=0"),
            "{local}"
        );
        let no_nodes = discover(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap_err();
        assert!(
            no_nodes.to_string().contains("SLURM_JOB_NODELIST"),
            "{no_nodes}"
        );
    }
}
