"""``OptstepsScheduler``: a diffusers scheduler that runs an optsteps schedule with the solver it was measured with.

Its config is the schedule: the K + 1 times ``t`` (exact floats, nothing snapped), the noise schedule, the solver
spec (``solver``, ``order``, ``lower_order_final``, ``corrector``), the network's ``prediction_type`` and the
``start_state`` rule. ``set_timesteps`` ignores what a pipeline asks for (step count, ``timesteps=``,
``sigmas=``, FLUX's ``mu``) and always sets the schedule's K network timesteps (``NoiseSchedule.timestep``:
t·N − 1 for VP, t·N for flow, as floats); ``step`` turns the model output into x̂_0 with optsteps' own
``PredictionDenoiser`` and advances with ``core.solvers.SolverRun`` — the same update ``optsteps sample`` and
the evaluation run (one rule, one place).

``init_noise_sigma`` is the start factor c of x_{t_0} = c·ε (``core.schedule.start_sigma``: σ_{t_0}, or σ_{t_max}
for ``"start_state": "raw"``), so a VP pipeline that multiplies its unit noise by ``init_noise_sigma`` (SD, SDXL)
starts where optsteps starts. Pipelines that never apply it (DDPMPipeline) get ``scale_first_sample=True``: the
first step scales its sample by c, and ``optsteps apply`` scales the first network input the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from optsteps.core.denoisers import PredictionDenoiser
from optsteps.core.noise_schedules import noise_schedule_from_dict
from optsteps.core.schedule import Schedule, start_sigma
from optsteps.core.solvers import SolverRun, SolverSpec
from optsteps.integrations.diffusers.export import scheduler_config

PREDICTION = {
    "epsilon": "epsilon",
    "v_prediction": "v_prediction",
    "sample": "sample",
    "flow": "flow",
    "flow_prediction": "flow",
}  # diffusers' names → optsteps' (core.denoisers.PREDICTION_TYPES)


@dataclass
class OptstepsSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class OptstepsScheduler(SchedulerMixin, ConfigMixin):
    """Runs one fixed optsteps schedule (module docstring). Build it with ``from_schedule``."""

    config_name = "scheduler_config.json"
    order = 1  # one model evaluation per step (UniPC's corrector reuses the next evaluation)

    @register_to_config
    def __init__(
        self,
        t: list | None = None,
        noise_schedule: dict | None = None,
        solver: str = "ddim",
        order: int | None = None,
        lower_order_final: bool = True,
        corrector: bool = True,
        prediction_type: str = "epsilon",
        start_state: str = "scaled",
        scale_first_sample: bool = False,
        num_train_timesteps: int = 1000,
    ):
        if not t or noise_schedule is None:
            raise ValueError(
                "OptstepsScheduler needs the schedule's times t and its noise_schedule; build it with "
                "OptstepsScheduler.from_schedule(schedule, prediction_type)."
            )
        self.schedule = Schedule(
            tuple(float(v) for v in t),
            noise_schedule_from_dict(dict(noise_schedule)),
            solver=solver,
            extra={"start_state": start_state} if start_state != "scaled" else {},
        )
        self.spec = SolverSpec(solver, order, lower_order_final, corrector)
        self.prediction = PREDICTION[prediction_type]
        self.init_noise_sigma = start_sigma(self.schedule.noise_schedule, self.schedule.t[0], start_state)
        self.num_inference_steps = self.schedule.nfe
        self.set_timesteps()

    @classmethod
    def from_schedule(cls, schedule: Schedule, prediction_type: str, scale_first_sample: bool = False):
        """The scheduler for ``schedule`` (its own solver spec; first order where it names none) and a network
        predicting ``prediction_type`` (diffusers' or optsteps' name)."""
        return cls(**scheduler_config(schedule, prediction_type, scale_first_sample))

    @property
    def step_index(self):
        return self._step_index

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None, **_ignored):
        """Always the schedule's K network timesteps t_0 … t_{K−1} (the request is ignored: the schedule is pinned)."""
        ns, tt = self.schedule.noise_schedule, self.schedule.timesteps_t
        self.timesteps = ns.timestep(tt[:-1]).float().to(device)
        self.sigmas = (tt if ns.family == "flow" else ns.sigma(tt) / ns.alpha(tt)).float().to(device)  # diffusers' σ
        self._step_index = 0
        self._run = SolverRun(self.schedule, self.spec)

    def set_begin_index(self, begin_index: int = 0):
        """Pipelines that start mid-schedule (img2img) call this; the schedule's own start is step 0."""
        if begin_index != 0:
            raise ValueError(
                "OptstepsScheduler runs its whole schedule from its first time; to start later, "
                "compute a schedule that starts there."
            )
        self._step_index = 0

    @property
    def begin_index(self):
        return 0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample  # the state is x_t itself (VP: α x_0 + σ ε; flow: (1 − t) x_0 + t ε)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **_ignored):
        """x_{i+1} from the network output at (x_i, t_i): x̂_0 by the prediction type, then ``SolverRun.step``."""
        i = self._step_index
        if i >= self.schedule.nfe:
            raise IndexError(
                f"OptstepsScheduler: step {i + 1} of a {self.schedule.nfe}-step schedule; call "
                "set_timesteps before running the schedule again."
            )
        dtype = sample.dtype
        x = sample.float() if dtype in (torch.float16, torch.bfloat16) else sample
        if i == 0 and self.config.scale_first_sample:
            x = x * self.init_noise_sigma
        out = model_output.to(x.dtype)
        t = torch.tensor(self.schedule.t[i], dtype=torch.float64)
        x0 = PredictionDenoiser(lambda *_: out, self.schedule.noise_schedule, self.prediction)(x, t)
        prev = self._run.step(i, x, x0).to(dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return OptstepsSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def __len__(self):
        return self.config.num_train_timesteps
