//! The tenant's side of the story: the `laundromat` commands a tenant types, in order.
use super::*;

use serde::Deserialize;

/// The payer: `laundromat --json pay --follow` running in the background. Each link it pays
/// prints one receipt line (JSON); they are shown, and kept for the checks at the end.
pub(super) struct Payer {
    child: Option<BoundedChild>,
    /// Receipt lines already read.
    read: usize,
    /// Stderr lines already shown (retries, following the VM to its new host).
    noted: usize,
    pub(super) receipts: Vec<Receipt>,
}

/// One accepted payment, as `laundromat pay --json` prints it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Receipt {
    pub(super) index: u64,
    pub(super) links_paid: u64,
    /// The hostd URL that accepted it.
    pub(super) host: String,
}

impl Payer {
    /// Shows what the payer printed since last time; fails if it has exited.
    fn show(&mut self, story: &Story) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the payer is not running");
        };
        let (console, stderr) = (child.console(), child.stderr());
        let running = child.is_running()?;
        self.take(story, &console, &stderr)?;
        ensure!(
            running,
            "`laundromat pay --follow` stopped on its own: {}",
            stderr.trim()
        );
        Ok(())
    }

    /// Reads and shows the receipts and notes in `console` and `stderr` not seen yet.
    fn take(&mut self, story: &Story, console: &str, stderr: &str) -> Result<()> {
        // The payer's notes first: they tell why the receipts after them changed host.
        for line in stderr.lines().skip(self.noted) {
            self.noted += 1;
            story.out.line(format_args!("  [pay] {line}"));
        }
        // Only whole lines: the last one may still be arriving.
        let complete = console.rfind('\n').map_or("", |end| &console[..end]);
        for line in complete.lines().skip(self.read) {
            self.read += 1;
            let receipt: Receipt = serde_json::from_str(line)
                .with_context(|| format!("the payer printed an odd receipt: {line}"))?;
            story.out.line(format_args!(
                "  [pay] link {:>3} accepted by {}",
                receipt.index,
                story.host_name(&receipt.host)
            ));
            self.receipts.push(receipt);
        }
        Ok(())
    }

    /// Stops paying: SIGINT, as a tenant's Ctrl-C; the payer finishes the payment in flight
    /// and exits. Its last receipts are read.
    pub(super) fn stop(&mut self, story: &Story) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.pid() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.is_running()? {
            ensure!(
                Instant::now() < deadline,
                "the payer did not stop on Ctrl-C"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Let the pipe readers take in the last lines.
        thread::sleep(Duration::from_millis(200));
        let (console, stderr) = (child.console(), child.stderr());
        self.child = None;
        self.take(story, &console, &stderr)
    }
}

impl Story<'_> {
    /// `laundromat` with the tenant's config dir and the broker, inside the laptop namespace.
    fn tenant_args<'b>(&'b self, args: &[&'b str]) -> Vec<&'b str> {
        let mut all = vec![
            "--config-dir",
            &self.tenant_dir,
            "--broker",
            &self.broker.url,
        ];
        all.extend_from_slice(args);
        all
    }

    pub(super) fn laundromat(&self, args: &[&str]) -> Result<Value> {
        self.tools
            .json(self.laptop, "laundromat", &self.tenant_args(args), self.out)
    }

    /// The tenant makes a key; the operator registers it and tops it up.
    pub(super) fn tenant(&mut self) -> Result<()> {
        self.out
            .step("a tenant makes a key, and the operator registers it and tops it up");
        let key = string(&self.laundromat(&["keygen"])?, "public_key")?;
        let secret = Service::operator_key(self.tools);
        let url = self.broker.url.as_str();
        let amount = TOPUP.to_string();
        let common = ["--broker", url, "--operator-secret", secret.as_str()];
        let add = [&["tenant", "add"][..], &common, &[key.as_str()]].concat();
        self.tools.text(self.laptop, "broker", &add, self.out)?;
        let topup = [&["topup"][..], &common, &[key.as_str(), amount.as_str()]].concat();
        self.tools.text(self.laptop, "broker", &topup, self.out)?;
        Ok(())
    }

    /// Buys a token for the bench guest: the chain is built locally, n × price goes to escrow.
    pub(super) fn buy(&mut self) -> Result<String> {
        self.out.step("the tenant buys a boot token");
        let kernel = self.kernel.to_string_lossy().into_owned();
        let cmdline = self.cmdline();
        let (mem, price, links) = (
            self.args.mem.to_string(),
            self.args.price.to_string(),
            self.args.links.to_string(),
        );
        let period = format!("{}ms", self.args.period_ms);
        let valid = format!("{}s", self.args.valid_for_s);
        let purchase = self.laundromat(&[
            "token",
            "buy",
            "--image",
            &kernel,
            "--cmdline",
            &cmdline,
            "--vcpus",
            "2",
            "--mem",
            &mem,
            "--price",
            &price,
            "--period",
            &period,
            "--links",
            &links,
            "--valid-for",
            &valid,
        ])?;
        let token = string(&purchase, "token_id")?;
        self.out.line(format_args!(
            "  token {token}: {links} links of {period} at {price} each"
        ));
        Ok(token)
    }

    pub(super) fn cmdline(&self) -> String {
        format!("workload=dirty wss={} report-ms=500", self.args.wss)
    }

    /// Injects the guest into host-a with the token.
    pub(super) fn inject(&mut self, token: &str) -> Result<String> {
        self.out.step("the tenant injects the VM into host-a");
        let kernel = self.kernel.to_string_lossy().into_owned();
        let cmdline = self.cmdline();
        let host = self.hosts[0].url().to_owned();
        let injected = self.laundromat(&[
            "vm",
            "inject",
            "--host",
            &host,
            "--token",
            token,
            "--kernel",
            &kernel,
            "--cmdline",
            &cmdline,
        ])?;
        let vm = string(&injected, "vm_id")?;
        self.out.line(format_args!("  VM {vm} runs on host-a"));
        Ok(vm)
    }

    /// Starts `laundromat pay --follow`: one link ahead of each period, to whichever host runs
    /// it.
    pub(super) fn pay(&mut self, vm: &str) -> Result<Payer> {
        self.out
            .step("the tenant pays as the VM runs (laundromat pay --follow)");
        let host = self.hosts[0].url().to_owned();
        let args = self.tenant_args(&["--json", "pay", "--vm", vm, "--host", &host, "--follow"]);
        let mut command = self.tools.command(self.laptop, "laundromat", &args);
        self.out.line(format_args!(
            "[{}] $ laundromat {} &",
            self.laptop.name(),
            shown(&args)
        ));
        let child = BoundedChild::spawn("pay", &mut command)?;
        Ok(Payer {
            child: Some(child),
            read: 0,
            noted: 0,
            receipts: Vec::new(),
        })
    }

    /// Lets `seconds` pass while the payer pays, showing what it prints.
    pub(super) fn wait_paying(&self, payer: &mut Payer, seconds: u64) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            check_stop()?;
            payer.show(self)?;
            thread::sleep(POLL);
        }
        payer.show(self)
    }

    /// Live-migrates the VM to host-b while the tenant keeps paying.
    pub(super) fn migrate(&mut self, vm: &str) -> Result<()> {
        self.out
            .step("the tenant live-migrates the VM to host-b while paying");
        let host = self.hosts[0].url().to_owned();
        let to = self.hosts[1].id.clone();
        let result = self.laundromat(&["vm", "migrate", vm, "--host", &host, "--to", &to])?;
        let stats = &result["stats"];
        self.out.line(format_args!(
            "  {}: {} rounds, {} MiB sent, downtime {:.0} ms, total {:.0} ms",
            result["status"].as_str().unwrap_or("?"),
            stats["rounds"].as_array().map_or(0, Vec::len),
            stats["ram"]["transferred"].as_u64().unwrap_or(0) >> 20,
            stats["downtime-ms"].as_f64().unwrap_or(f64::NAN),
            stats["total-time-ms"].as_f64().unwrap_or(f64::NAN),
        ));
        self.outcome.migration = result;
        Ok(())
    }

    /// The most errors the guest reported about its own memory, from host-b's console; fails if
    /// the guest never reported on host-b.
    pub(super) fn guest_errors(&mut self, vm: &str) -> Result<u64> {
        let host = self.hosts[1].url().to_owned();
        let args = self.tenant_args(&["vm", "console", vm, "--host", &host]);
        let console = self
            .tools
            .text(self.laptop, "laundromat", &args, self.out)?;
        let reports: Vec<u64> = console
            .lines()
            .filter(|line| line.starts_with("bench: t="))
            .filter_map(|line| field(line, "errors"))
            .collect();
        if let Some(last) = console.lines().rfind(|line| line.starts_with("bench: t=")) {
            self.out.line(format_args!("  guest on host-b: {last}"));
        }
        ensure!(!reports.is_empty(), "the guest printed no report on host-b");
        Ok(reports.into_iter().max().unwrap_or(0))
    }

    /// Waits for host-b to reclaim the unpaid VM (paid time plus grace).
    pub(super) fn reclaim(&mut self) -> Result<()> {
        self.out
            .step("host-b reclaims the VM once its paid time and the grace period are over");
        let budget = Duration::from_millis(self.args.period_ms * 2)
            + Duration::from_secs(self.args.grace_s)
            + SLACK;
        let host_b = &self.hosts[1];
        wait_for("host-b's reclaim", budget, || {
            Ok((host_b.metric(RECLAIMED_UNPAID)? >= 1.0).then_some(()))
        })?;
        self.outcome.reclaimed = true;
        self.out
            .line("  reclaimed: the vmm is stopped and the VM's resources are freed");
        Ok(())
    }

    /// Waits for the token to expire and the broker to refund what is left in escrow.
    pub(super) fn refund(&mut self, token: &str) -> Result<Value> {
        self.out
            .step("the token expires and the broker refunds the unspent escrow");
        let budget = Duration::from_secs(self.args.valid_for_s) + SLACK;
        let args = self.tenant_args(&["token", "show", token]);
        let quiet = self.out.quiet();
        self.out.line(format_args!(
            "[{}] $ laundromat {} (until refunded)",
            self.laptop.name(),
            shown(&args)
        ));
        wait_for("the refund", budget, || {
            let state = self.tools.json(self.laptop, "laundromat", &args, quiet)?;
            Ok(state
                .get("refunded")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .then_some(state))
        })
    }
}

/// hostd's count of VMs it stopped because their payments ran out.
const RECLAIMED_UNPAID: &str = "hostd_vms_reclaimed_total{reason=\"unpaid\"}";

/// The number in `key=N` among a line's words.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}
