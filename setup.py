from setuptools import find_packages, setup

setup(
    name="calico",
    version="0.1.0",
    description="Routed container networking with security groups: a re-creation of the first Calico prototype",
    packages=find_packages(include=["calico", "calico.*"]),
    python_requires=">=3.11",
    install_requires=[
        # Lower bounds are Debian bookworm's packages, which the images use;
        # constraints.txt pins the test environment to exactly those.
        "pyzmq>=24.0.1",
        "netaddr>=0.8.0",
        "python-iptables>=1.0.1",
        "pyroute2>=0.7.2,<0.8",
        "watchdog>=2.2.1",
        "prometheus-client>=0.16.0",
        "docker",
    ],
    extras_require={
        "test": ["pytest"],
        # bench/lab_group_scale_bench.py --plot draws its curves with it.
        "bench": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "calico-plugin=calico.plugin.main:main",
            "calico-acl-manager=calico.acl_manager.main:main",
            "calico-felix=calico.felix.main:main",
            "calico-lab=calico.lab.cli:main",
            "calico-bird-config=calico.bird:main",
            "calico-attach=calico.attach:main",
            "calico-status=calico.status:main",
            "calico-health=calico.common.health:main",
        ]
    },
)
