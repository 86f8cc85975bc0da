//! pgbridge's own statements in the extended protocol: named statements of its own, kept
//! prepared per session once their ParseComplete arrived, parsed again after DISCARD or
//! DEALLOCATE (or a batch that failed before they were confirmed).

use super::super::expect::{Expect, Step};
use super::Driver;
use crate::protocol::wire;
use crate::sql::Analysis;

impl<'a> Driver<'a> {
    /// DISCARD and DEALLOCATE drop prepared statements, pgbridge's too (any of them, to be safe):
    /// parse them again before their next use.
    pub(super) fn forget_injected(&mut self, analysis: &Analysis) {
        if analysis.drops_prepared() {
            self.injected_parsed.clear();
            self.shared.lock().forget_injected();
        }
    }

    /// Runs `sql` as pgbridge's own named statement and portal, leaving the client's unnamed
    /// statement and portal alone. A statement prepared before is only bound and executed;
    /// otherwise it is closed (a failed DISCARD may have left it) and parsed first.
    pub(super) fn inject(&mut self, name: &'static str, sql: &str, step: Step, forward: bool) {
        let (parse, epoch) = {
            let t = self.shared.lock();
            (!t.injected.contains(&name), t.injected_epoch)
        };
        // Parsed earlier in this batch: its Parse is not known to have succeeded, parse again.
        if parse && !self.injected_parsed.contains(&name) {
            self.injected_parsed.push(name);
        }
        let parsed = parse.then_some(Expect::InjectedParse { name, epoch });
        self.send_injected(name, parse.then_some(sql), parsed, step, forward);
    }

    /// Runs `sql` as pgbridge's named statement `name`, parsed anew.
    pub(super) fn inject_once(&mut self, name: &str, sql: &str, step: Step, forward: bool) {
        self.send_injected(name, Some(sql), None, step, forward);
    }

    /// Closes pgbridge's portal, parses `sql` as `name` when given (closing `name` first),
    /// binds the portal to `name` and executes it. `parsed`: what the Parse's reply is expected
    /// as, when not as an ordinary Parse.
    pub(super) fn send_injected(
        &mut self,
        name: &str,
        sql: Option<&str>,
        parsed: Option<Expect>,
        step: Step,
        forward: bool,
    ) {
        let mut expects = vec![Expect::Close { forward }];
        let mut frames = vec![wire::close(b'P', "pgbridge_p")];
        if let Some(sql) = sql {
            expects.extend([
                Expect::Close { forward },
                parsed.unwrap_or(Expect::Parse { forward }),
            ]);
            frames.extend([wire::close(b'S', name), wire::parse(name, sql)]);
        }
        expects.extend([Expect::Bind { forward }, Expect::Execute { step, forward }]);
        frames.extend([wire::bind("pgbridge_p", name), wire::execute("pgbridge_p")]);
        for e in expects {
            self.expect(e);
        }
        for bytes in frames {
            self.out.extend_from_slice(&bytes);
        }
    }
}
