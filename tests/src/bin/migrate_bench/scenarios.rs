//! migrate-bench's scenarios: each runs one migration, ours or QEMU's, and records it.
use super::*;

/// What every run needs: the programs, the scratch directory, the time bounds.
pub(super) struct Bench {
    pub(super) vmm: PathBuf,
    pub(super) qemu: PathBuf,
    pub(super) qemu_machine: String,
    pub(super) pvh: PathBuf,
    pub(super) bench: PathBuf,
    pub(super) scratch: ScratchDir,
    pub(super) timeout: Duration,
    pub(super) qemu_converge: Duration,
    /// The identities our source and destination authenticate each other with.
    pub(super) keys: HostKeys,
    /// Numbers the sockets, so no two children ever share one.
    pub(super) next_id: u32,
    /// QEMU TLS's credentials.
    pub(super) qemu_tls: QemuTlsCreds,
    /// Our connections and QEMU's multifd channels in the PVH scenarios.
    pub(super) connections: u32,
    /// The VMM settings that run the PVH scenarios.
    pub(super) vmms: Vec<Vmm>,
}

impl Bench {
    pub(super) fn scratch_file(&mut self, stem: &str, extension: &str) -> PathBuf {
        self.next_id += 1;
        self.scratch
            .join(&format!("{stem}-{}.{extension}", self.next_id))
    }

    /// The idle case: one random file, copied afresh before each run so that every VMM starts
    /// from the same contents; the VMMs take turns so machine noise hits them alike.
    pub(super) fn idle_runs(&mut self, runs: u32) -> Result<Vec<Migration>> {
        let random = self.scratch.join("random.img");
        eprintln!("migrate-bench: writing {IDLE_MEM_MIB} MiB of random bytes");
        write_random(&random, IDLE_MEM_MIB << 20, 0x6c61_756e_6472_6f6d)?;
        let files = MemFiles {
            source: self.scratch.join("source.img"),
            dest: self.scratch.join("dest.img"),
        };
        let guest = PvhGuest {
            wss_mib: IDLE_WSS_MIB,
            mem_mib: IDLE_MEM_MIB,
            files: Some(files),
        };
        let files = guest.files.as_ref().context("the idle guest has files")?;
        let results = self.take_turns("idle 1 GiB random", runs, &guest, || {
            fs::copy(&random, &files.source).context("cannot copy the random file")?;
            remove_if_present(&files.dest)
        })?;
        for file in [&files.source, &files.dest, &random] {
            remove_if_present(file)?;
        }
        Ok(results)
    }

    /// `runs` migrations of `guest` per VMM setting, the settings taking turns so that machine
    /// noise hits them alike; `prepare` runs before each one.
    pub(super) fn take_turns(
        &mut self,
        scenario: &str,
        runs: u32,
        guest: &PvhGuest,
        mut prepare: impl FnMut() -> Result<()>,
    ) -> Result<Vec<Migration>> {
        let mut results = Vec::new();
        for run in 1..=runs {
            for vmm in self.vmms.clone() {
                eprintln!(
                    "migrate-bench: {scenario}, {}, run {run}/{runs}",
                    vmm.label()
                );
                prepare()?;
                let mut migration = self.pvh_migration(scenario, vmm, guest);
                migration.run = run;
                results.push(migration);
            }
        }
        Ok(results)
    }

    /// One migration of the PVH guest; a run the harness cannot finish is recorded as an error
    /// rather than ending the benchmark.
    pub(super) fn pvh_migration(
        &mut self,
        scenario: &str,
        vmm: Vmm,
        guest: &PvhGuest,
    ) -> Migration {
        let mut migration = Migration::new(scenario, vmm);
        let outcome = match vmm {
            Vmm::Ours => self.ours_pvh(guest, &mut migration),
            Vmm::QemuDefault | Vmm::QemuBest | Vmm::QemuTls => {
                self.qemu_pvh(guest, vmm, &mut migration)
            }
        };
        record_error(&mut migration, outcome);
        migration
    }

    pub(super) fn bench_migration(&mut self, rate: u64, auto_converge: bool) -> Migration {
        let scenario = format!("bench dirty wss={BENCH_WSS_MIB} MiB");
        eprintln!(
            "migrate-bench: {scenario}, rate={rate}, auto-converge {}",
            if auto_converge { "on" } else { "off" }
        );
        let mut migration = Migration::new(&scenario, Vmm::Ours);
        migration.rate = Some(rate);
        migration.auto_converge = auto_converge;
        let outcome = self.ours_bench(rate, &mut migration);
        record_error(&mut migration, outcome);
        migration
    }

    pub(super) fn vmm_command(&self) -> Command {
        let mut command = Command::new(&self.vmm);
        command.env("VMM_LOG", "warn");
        command
    }

    pub(super) fn ours_pvh(&mut self, guest: &PvhGuest, migration: &mut Migration) -> Result<()> {
        let mut source = self.vmm_command();
        source
            .args(["run", "--boot", "pvh", "--kernel"])
            .arg(&self.pvh)
            .args(["--cmdline", &guest.cmdline()])
            .args(["--mem", &guest.mem_mib.to_string()]);
        if let Some(files) = &guest.files {
            source.arg("--mem-file").arg(&files.source);
        }
        let dest_file = guest.files.as_ref().map(|files| files.dest.as_path());
        let timeout = self.timeout;
        let ready = |source: &mut BoundedChild| Ok(source.wait_for(PVH_DIRTYING, timeout)?);
        let options = MigrateOptions {
            connections: Some(self.connections),
            ..MigrateOptions::default()
        };
        let mut run = self.ours_migrate(source, ready, dest_file, options, migration)?;
        if !migration.completed() {
            return Ok(());
        }
        match &guest.files {
            Some(files) => {
                // Freeze the destination so its memory file holds still while it is read.
                self.ctl(&run.dest_sock, &["pause"])?;
                check_memory(files, guest, migration)?;
            }
            None => check_dot(&mut run.dest, self.timeout, migration),
        }
        Ok(())
    }

    pub(super) fn ours_bench(&mut self, rate: u64, migration: &mut Migration) -> Result<()> {
        let cmdline =
            format!("workload=dirty wss={BENCH_WSS_MIB} rate={rate} report-ms={BENCH_REPORT_MS}");
        let mut source = self.vmm_command();
        source
            .args(["run", "--boot", "bench", "--kernel"])
            .arg(&self.bench)
            .args(["--cmdline", &cmdline])
            .args(["--mem", &BENCH_MEM_MIB.to_string()])
            .args(["--vcpus", &BENCH_VCPUS.to_string()]);
        let options = MigrateOptions {
            max_rounds: Some(BENCH_MAX_ROUNDS),
            timeout_s: Some(BENCH_TIMEOUT_S),
            auto_converge: migration.auto_converge,
            connections: None,
        };
        let timeout = self.timeout;
        let ready = |source: &mut BoundedChild| bench_populated(source, timeout);
        let mut run = self.ours_migrate(source, ready, None, options, migration)?;
        migration.guest_rate_before = Integrity::of_console(&run.console_before).last_rate;
        migration.guest_rate_during = Integrity::of_console(&run.console_during).last_rate;
        if migration.completed() {
            check_bench(&mut run.dest, self.timeout, migration)?;
        }
        Ok(())
    }

    /// Starts a destination and the `source` VMM, waits until `ready` returns, migrates with
    /// `vmm ctl ... migrate` and `options`, and fills `migration` from the statistics. Returns
    /// the destination, still running, for the caller's checks.
    pub(super) fn ours_migrate(
        &mut self,
        mut source: Command,
        ready: impl FnOnce(&mut BoundedChild) -> Result<()>,
        dest_mem_file: Option<&Path>,
        options: MigrateOptions,
        migration: &mut Migration,
    ) -> Result<OursRun> {
        let port = free_port().context("no free TCP port")?;
        let url = format!("tcp://127.0.0.1:{port}");
        let (source_sock, dest_sock) = (
            self.scratch_file("ours-source", "sock"),
            self.scratch_file("ours-dest", "sock"),
        );
        let mut dest = self.vmm_command();
        dest.args(["run", "--incoming", &url])
            .args(self.keys.incoming_args())
            .arg("--api-sock")
            .arg(&dest_sock);
        if let Some(file) = dest_mem_file {
            dest.arg("--mem-file").arg(file);
        }
        source.arg("--api-sock").arg(&source_sock);
        let mut ctl = self.vmm_command();
        ctl.arg("ctl")
            .arg(&source_sock)
            .args(["migrate", &url])
            .args(self.keys.migrate_args())
            .args(options.ctl_args());
        migration.commands = [&dest, &source, &ctl].map(command_line).to_vec();

        let mut dest = BoundedChild::spawn("our destination", &mut dest)?;
        let mut source = BoundedChild::spawn("our source", &mut source)?;
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_until(self.timeout, || {
            Ok(netns::is_listening(dest.pid(), address)?)
        })
        .context("our destination never listened")?;
        ready(&mut source)?;
        wait_until(self.timeout, || Ok(source_sock.exists()))
            .context("our source never opened its control socket")?;

        let console_before = source.console();
        let started = Instant::now();
        let mut ctl = BoundedChild::spawn("vmm ctl migrate", &mut ctl)?;
        // Only the final statistics line has "ok"; our timeout is a bound, not a measurement.
        let bound = self.timeout + Duration::from_secs(BENCH_TIMEOUT_S);
        ctl.wait_for("\"ok\":", bound)?;
        migration.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        // The statistics line may still be arriving: it is complete once `vmm ctl` exits.
        wait_until(self.timeout, || Ok(!ctl.is_running()?))
            .context("`vmm ctl migrate` did not exit after its statistics")?;
        let (progress, stats) = parse_ctl_output(&ctl.console())?;
        let console_during = source.console();
        let console_during = console_during
            .strip_prefix(&console_before)
            .unwrap_or_default()
            .to_owned();
        fill_ours(migration, &stats);
        let max_rounds = options.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS);
        let stop = StopReason::infer(&stats, &progress, DOWNTIME_TARGET_MS, max_rounds);
        migration.stop = (stats.stop_reason.clone()).unwrap_or_else(|| stop.label().to_owned());
        if migration.completed() {
            // The source must exit, and with status 0, once the destination runs the VM.
            let exited = wait_until(self.timeout, || Ok(!source.is_running()?)).is_ok();
            let status = source.kill().context("cannot reap our source")?;
            if !exited || !status.success() {
                migration.problems.push(format!(
                    "the source VMM did not exit 0 after a completed migration ({})",
                    if exited {
                        status.to_string()
                    } else {
                        "still running".into()
                    }
                ));
            }
            if !dest.is_running()? {
                migration.problems.push(format!(
                    "the destination VMM exited after a completed migration; console:\n{}",
                    dest.console()
                ));
            }
        } else if let Some(error) = &stats.error {
            migration
                .problems
                .push(format!("migration {}: {error}", stats.status));
        }
        Ok(OursRun {
            console_before,
            console_during,
            dest,
            dest_sock,
        })
    }

    /// Runs `vmm ctl SOCK ARGS...` and checks it answered ok.
    pub(super) fn ctl(&self, sock: &Path, args: &[&str]) -> Result<()> {
        let mut command = self.vmm_command();
        command.arg("ctl").arg(sock).args(args);
        let mut child = BoundedChild::spawn("vmm ctl", &mut command)?;
        child.wait_for("\"ok\":", self.timeout)?;
        let answer = child.console();
        ensure!(
            answer.contains("\"ok\":true"),
            "`{}` answered {answer}",
            command_line(&command)
        );
        Ok(())
    }

    /// QEMU's microvm on the PVH guest, RAM from `mem_file` (shared) or anonymous, driven over
    /// QMP at `qmp_sock`; a destination waits for `migrate-incoming`.
    pub(super) fn qemu_command(
        &self,
        guest: &PvhGuest,
        mem_file: Option<&Path>,
        qmp_sock: &Path,
        incoming: bool,
        tls: bool,
    ) -> Command {
        let mut command = Command::new(&self.qemu);
        if tls {
            // The destination is the TLS server, the source its client.
            command.args(["-object", &self.qemu_tls.object(incoming)]);
        }
        let mem = format!("{}M", guest.mem_mib);
        match mem_file {
            Some(file) => {
                command.args(["-M", &format!("{},memory-backend=mem", self.qemu_machine)]);
                let backend = format!(
                    "memory-backend-file,id=mem,size={mem},mem-path={},share=on",
                    file.display()
                );
                command.args(["-object", &backend]);
            }
            None => {
                command.args(["-M", &self.qemu_machine]);
            }
        }
        command.args(["-m", &mem, "-accel", "kvm", "-kernel"]);
        command
            .arg(&self.pvh)
            .args(["-append", &guest.cmdline()])
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            .args(["-serial", "stdio", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()));
        if incoming {
            // The listening address comes later over QMP, after the capabilities are set.
            command.args(["-incoming", "defer"]);
        }
        command
    }

    pub(super) fn qemu_pvh(
        &mut self,
        guest: &PvhGuest,
        vmm: Vmm,
        migration: &mut Migration,
    ) -> Result<()> {
        let port = free_port().context("no free TCP port")?;
        let uri = format!("tcp:127.0.0.1:{port}");
        let (source_qmp, dest_qmp) = (
            self.scratch_file("qemu-source", "qmp"),
            self.scratch_file("qemu-dest", "qmp"),
        );
        let files = guest.files.as_ref();
        let tls = vmm == Vmm::QemuTls;
        let dest_file = files.map(|f| f.dest.as_path());
        let mut dest = self.qemu_command(guest, dest_file, &dest_qmp, true, tls);
        let source_file = files.map(|f| f.source.as_path());
        let mut source = self.qemu_command(guest, source_file, &source_qmp, false, tls);
        migration.commands = vec![command_line(&dest), command_line(&source)];

        let mut dest = BoundedChild::spawn("QEMU destination", &mut dest)?;
        let mut source = BoundedChild::spawn("QEMU source", &mut source)?;
        let mut dest_qmp = Qmp::connect(&dest_qmp, self.timeout)?;
        let mut source_qmp = Qmp::connect(&source_qmp, self.timeout)?;
        source.wait_for(PVH_DIRTYING, self.timeout)?;

        if vmm.multifd() {
            // Both ends must have multifd, the same number of channels, and the same TLS.
            for (side, qmp) in [("destination", &mut dest_qmp), ("source", &mut source_qmp)] {
                let multifd = capabilities(&[("multifd", true)]);
                qmp_run(
                    &mut migration.commands,
                    qmp,
                    side,
                    "migrate-set-capabilities",
                    multifd,
                )?;
                let mut channels = json!({ "multifd-channels": self.connections });
                if tls {
                    channels["tls-creds"] = json!("tls0");
                }
                qmp_run(
                    &mut migration.commands,
                    qmp,
                    side,
                    "migrate-set-parameters",
                    channels,
                )?;
            }
            let limits = json!({
                "max-bandwidth": UNLIMITED_BANDWIDTH,
                "downtime-limit": DOWNTIME_TARGET_MS as u64,
            });
            qmp_run(
                &mut migration.commands,
                &mut source_qmp,
                "source",
                "migrate-set-parameters",
                limits,
            )?;
        }
        qmp_run(
            &mut migration.commands,
            &mut dest_qmp,
            "destination",
            "migrate-incoming",
            json!({ "uri": uri }),
        )?;
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_until(self.timeout, || {
            Ok(netns::is_listening(dest.pid(), address)?)
        })
        .context("the QEMU destination never listened")?;

        let started = Instant::now();
        qmp_run(
            &mut migration.commands,
            &mut source_qmp,
            "source",
            "migrate",
            json!({ "uri": uri }),
        )?;
        migration.commands.push(format!(
            "QMP source: {} every {} ms until it ends",
            qmp::command_line("query-migrate", &Value::Null),
            POLL.as_millis()
        ));
        let mut forced = false;
        let info = loop {
            let info = source_qmp.query_migrate()?;
            if info.is_finished() {
                break info;
            }
            let elapsed = started.elapsed();
            if !forced && elapsed > self.qemu_converge {
                // Like our `--on-timeout force`: accept any downtime, so QEMU switches over.
                let force = json!({ "downtime-limit": QEMU_FORCE_DOWNTIME_MS });
                qmp_run(
                    &mut migration.commands,
                    &mut source_qmp,
                    "source",
                    "migrate-set-parameters",
                    force,
                )?;
                forced = true;
            }
            if elapsed > self.qemu_converge + self.timeout {
                // Best effort: the children are killed on return anyway.
                let _ = source_qmp.execute("migrate_cancel", &Value::Null);
                break info;
            }
            thread::sleep(POLL);
        };
        migration.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let ram = info.ram.clone().unwrap_or_default();
        migration.status = info.status.clone().unwrap_or_else(|| "unknown".into());
        migration.total_ms = info.total_time.unwrap_or(0) as f64;
        migration.downtime_ms = info.downtime.unwrap_or(0) as f64;
        migration.setup_ms = info.setup_time.unwrap_or(0) as f64;
        migration.transferred_bytes = ram.transferred;
        migration.rounds = ram.dirty_sync_count;
        migration.reported_mbps = ram.mbps;
        migration.dirty_pages_rate = ram.dirty_pages_rate;
        migration.throttle_percent = info.cpu_throttle_percentage.unwrap_or(0);
        migration.set_throughput();
        migration.stop = match (migration.completed(), forced) {
            (true, false) => "converged".into(),
            (true, true) => format!("forced after {} s", self.qemu_converge.as_secs()),
            (false, _) => "did not finish".into(),
        };
        if !migration.completed() {
            if let Some(error) = info.error_desc {
                migration.problems.push(format!("QEMU: {error}"));
            }
            return Ok(());
        }
        wait_until(self.timeout, || {
            let status = dest_qmp.execute("query-status", &Value::Null)?;
            Ok(status["status"] == "running")
        })
        .context("the QEMU destination never ran the VM")?;
        match files {
            Some(files) => {
                dest_qmp.execute("stop", &Value::Null)?;
                check_memory(files, guest, migration)?;
            }
            None => check_dot(&mut dest, self.timeout, migration),
        }
        Ok(())
    }
}
