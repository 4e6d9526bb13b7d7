// anatomark OHIF mode (plain ES module, loaded at run time through window.config.modes): DX/CR/secondary-capture
// X-rays in one 2D stack viewport, with "Auto-landmark", "Save" and "Label map" in the toolbar (with text labels) and
// the anatomark side panel (panel.js) open on the right.
// Route: /anatomark?StudyInstanceUIDs=<study UID>
import { registerTool, TOOL_NAME } from './extension.js';

const ohif = {
  layout: '@ohif/extension-default.layoutTemplateModule.viewerLayout',
  sopClassHandler: '@ohif/extension-default.sopClassHandlerModule.stack',
  thumbnailList: '@ohif/extension-default.panelModule.seriesList',
  measurements: '@ohif/extension-cornerstone.panelModule.panelMeasurement',
};
const cs3d = { viewport: '@ohif/extension-cornerstone.viewportModule.cornerstone' };
// the saved corrections stored in the study as DICOM SR (TID 1500, one SCOORD POINT per landmark): OHIF's own SR
// display shows them, read-only, when the SR's thumbnail is opened
const dicomsr = {
  sopClassHandler: '@ohif/extension-cornerstone-dicom-sr.sopClassHandlerModule.dicom-sr',
  viewport: '@ohif/extension-cornerstone-dicom-sr.viewportModule.dicom-sr',
};
const anatomark = { panel: 'anatomark.panelModule.landmarks' };

const DEPENDENCIES = {
  '@ohif/extension-default': '^3.0.0',
  '@ohif/extension-cornerstone': '^3.0.0',
  '@ohif/extension-cornerstone-dicom-sr': '^3.0.0',
};

export const XRAY_MODALITIES = ['DX', 'CR', 'OT', 'RG', 'DR'];

const setToolActive = toolName => ({
  commandName: 'setToolActive',
  commandOptions: { toolGroupIds: ['default'], toolName },
  context: 'CORNERSTONE',
});

const toolbarButtons = [
  {
    id: 'AnatomarkAutoLandmark',
    uiType: 'ohif.toolButton',
    props: {
      icon: 'tool-probe',
      label: 'Auto-landmark',
      tooltip: 'Auto-landmark: find every landmark with the MONAI Label model',
      commands: 'anatomarkAutoLandmark',
      evaluate: 'evaluate.action',
    },
  },
  {
    id: 'AnatomarkSave',
    uiType: 'ohif.toolButton',
    props: {
      icon: 'tool-point',
      label: 'Save landmarks',
      tooltip: 'Save the landmarks as the final label of this image',
      commands: 'anatomarkSave',
      evaluate: 'evaluate.action',
    },
  },
  {
    id: 'AnatomarkLabelmap',
    uiType: 'ohif.toolButton',
    props: {
      icon: 'tab-segmentation',
      label: 'Label map',
      tooltip: "Show or hide the server's label map (a disk per landmark) as a segmentation",
      commands: 'anatomarkToggleLabelmap',
      evaluate: 'evaluate.action',
    },
  },
  {
    id: 'WindowLevel',
    uiType: 'ohif.toolButton',
    props: {
      icon: 'tool-window-level',
      label: 'Window Level',
      commands: setToolActive('WindowLevel'),
      evaluate: 'evaluate.cornerstoneTool',
    },
  },
  {
    id: 'Pan',
    uiType: 'ohif.toolButton',
    props: { icon: 'tool-move', label: 'Pan', commands: setToolActive('Pan'), evaluate: 'evaluate.cornerstoneTool' },
  },
  {
    id: 'Zoom',
    uiType: 'ohif.toolButton',
    props: { icon: 'tool-zoom', label: 'Zoom', commands: setToolActive('Zoom'), evaluate: 'evaluate.cornerstoneTool' },
  },
];

function modeFactory() {
  return {
    id: 'anatomark',
    routeName: 'anatomark',
    displayName: 'X-ray landmarks',
    onModeEnter: ({ servicesManager, extensionManager }) => {
      const { toolbarService, toolGroupService, measurementService } = servicesManager.services;
      measurementService?.clearMeasurements?.();
      const { toolNames, Enums } = extensionManager.getModuleEntry(
        '@ohif/extension-cornerstone.utilityModule.tools'
      ).exports;
      registerTool();
      toolGroupService.createToolGroupAndAddTools('default', {
        active: [
          { toolName: toolNames.WindowLevel, bindings: [{ mouseButton: Enums.MouseBindings.Primary }] },
          { toolName: toolNames.Pan, bindings: [{ mouseButton: Enums.MouseBindings.Auxiliary }] },
          {
            toolName: toolNames.Zoom,
            bindings: [{ mouseButton: Enums.MouseBindings.Secondary }, { numTouchPoints: 2 }],
          },
        ],
        passive: [{ toolName: TOOL_NAME }],
        enabled: [],
      });
      // OHIF's SR viewport draws the report's points with the DICOMSRDisplay tool of the tool group 'SRToolGroup'
      const sr = extensionManager.getModuleEntry('@ohif/extension-cornerstone-dicom-sr.utilityModule.tools');
      if (sr) {
        toolGroupService.createToolGroupAndAddTools('SRToolGroup', {
          active: [
            { toolName: toolNames.WindowLevel, bindings: [{ mouseButton: Enums.MouseBindings.Primary }] },
            { toolName: toolNames.Pan, bindings: [{ mouseButton: Enums.MouseBindings.Auxiliary }] },
            { toolName: toolNames.Zoom, bindings: [{ mouseButton: Enums.MouseBindings.Secondary }] },
          ],
          enabled: [{ toolName: sr.exports.toolNames.DICOMSRDisplay }],
        });
      }
      toolbarService.register(toolbarButtons);
      toolbarService.updateSection('primary', [
        'AnatomarkAutoLandmark',
        'AnatomarkSave',
        'AnatomarkLabelmap',
        'WindowLevel',
        'Pan',
        'Zoom',
      ]);
    },
    onModeExit: ({ servicesManager }) => {
      const { toolGroupService, uiDialogService, uiModalService } = servicesManager.services;
      uiDialogService?.hideAll?.();
      uiModalService?.hide?.();
      toolGroupService.destroy();
    },
    validationTags: { study: [], series: [] },
    isValidMode: ({ modalities }) => {
      const list = (modalities || '').split('\\');
      const ok = list.some(m => XRAY_MODALITIES.includes(m));
      return { valid: ok, description: `anatomark needs an X-ray (${XRAY_MODALITIES.join(', ')})` };
    },
    routes: [
      {
        path: 'anatomark',
        layoutTemplate: () => ({
          id: ohif.layout,
          props: {
            leftPanels: [ohif.thumbnailList],
            leftPanelResizable: true,
            rightPanels: [anatomark.panel],
            rightPanelClosed: false,
            rightPanelResizable: true,
            viewports: [
              { namespace: cs3d.viewport, displaySetsToDisplay: [ohif.sopClassHandler] },
              { namespace: dicomsr.viewport, displaySetsToDisplay: [dicomsr.sopClassHandler] },
            ],
          },
        }),
      },
    ],
    extensions: DEPENDENCIES,
    hangingProtocol: 'default',
    sopClassHandlers: [ohif.sopClassHandler, dicomsr.sopClassHandler],
  };
}

export default {
  id: 'anatomark',
  modeFactory,
  extensionDependencies: DEPENDENCIES,
};
