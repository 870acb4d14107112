"""The manager's domain state machine against a model, driven by hypothesis
through the client library, the rings and simulated spawnds."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.testing.inprocess import InProcessRuntime

CORES = 3


class Model:
    def __init__(self, dom, core):
        self.dom = dom
        self.home = core
        self.state = State.RUNNING
        self.cores = [core]
        self.live = {core}
        self.status = None


def result(call):
    try:
        return ("ok", call())
    except ProcMgmtError as e:
        return ("error", e.code)


class DomainMachine(RuleBasedStateMachine):
    pending = "replyq"

    def __init__(self):
        super().__init__()
        self.rt = InProcessRuntime(cores=CORES, pending=self.pending, prefix="procmgr-test")
        self.client = self.rt.client()
        self.models: list[Model] = []

    def teardown(self):
        self.rt.close()

    def _stopped(self, m: Model, status: int) -> None:
        m.state, m.status, m.live = State.CLEANED, status, set()

    @rule(core=st.integers(0, CORES - 1))
    def spawn(self, core):
        dom = self.client.spawn(["prog"], core=core, timeout=5)
        assert dom.core == core
        self.models.append(Model(dom, core))

    @precondition(lambda self: self.models)
    @rule(data=st.data(), core=st.integers(0, CORES - 1))
    def span(self, data, core):
        m = data.draw(st.sampled_from(self.models))
        got = result(lambda: self.client.span(m.dom, core, timeout=5))
        if m.state != State.RUNNING:
            assert got == ("error", Err.DOMAIN_NOT_RUNNING)
        elif core in m.cores:
            assert got == ("error", Err.ALREADY_SPANNED)
        else:
            assert got[0] == "ok"
            m.cores.append(core)
            m.live.add(core)

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def kill(self, data):
        m = data.draw(st.sampled_from(self.models))
        got = result(lambda: self.client.kill(m.dom, timeout=5))
        if m.state == State.RUNNING:
            assert got == ("ok", None)
            self._stopped(m, 9)
        else:
            assert got == ("error", Err.DOMAIN_NOT_RUNNING)

    @precondition(lambda self: self.models)
    @rule(data=st.data(), status=st.integers(0, 255))
    def exit_call(self, data, status):
        m = data.draw(st.sampled_from(self.models))
        got = result(lambda: self.client.exit(m.dom, status, timeout=5))
        if m.state == State.RUNNING:
            assert got == ("ok", None)
            self._stopped(m, status)
        else:
            assert got == ("error", Err.DOMAIN_NOT_RUNNING)

    @precondition(lambda self: any(m.live for m in self.models))
    @rule(data=st.data(), status=st.integers(0, 255))
    def dispatcher_exits(self, data, status):
        m = data.draw(st.sampled_from([m for m in self.models if m.live]))
        core = data.draw(st.sampled_from(sorted(m.live)))
        self.rt.spawnds[core].exit(m.dom.id, status)
        self.rt.pump()
        if core == m.home or m.live == {core}:
            self._stopped(m, status)      # the others are killed with it
        else:
            m.live.discard(core)          # a spanned dispatcher ended alone

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def wait_nohang(self, data):
        m = data.draw(st.sampled_from(self.models))
        assert self.client.wait(m.dom, nohang=True, timeout=5) == m.status

    @invariant()
    def manager_agrees_with_model(self):
        table = self.rt.manager.table
        for m in self.models:
            dom = table.by_id(m.dom.id)
            assert dom.state == m.state
            assert dom.exit_status == m.status
            assert dom.cores == m.cores
            assert dom.live == m.live
            assert dom.running == len(m.live)
        # nothing owed to anyone, nothing left pending at any spawnd
        assert all(not c.outstanding for c in self.rt.manager.clients.values())
        assert all(len(sd.pending) == 0 and not sd.sendq
                   for sd in self.rt.manager.spawnds.values())
        assert sorted(self.client.domains(timeout=5)) == sorted(
            m.dom.id for m in self.models if m.state != State.CLEANED)


class HashtableDomainMachine(DomainMachine):
    pending = "hashtable"


_SETTINGS = settings(max_examples=30, stateful_step_count=25, deadline=None)
DomainMachine.TestCase.settings = _SETTINGS
HashtableDomainMachine.TestCase.settings = _SETTINGS
TestReplyQueueDomains = DomainMachine.TestCase
TestHashtableDomains = HashtableDomainMachine.TestCase
