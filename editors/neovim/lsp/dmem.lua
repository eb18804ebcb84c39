-- Neovim 0.11+: `vim.lsp.enable('dmem')` starts dmem-lsp for every file you edit.
-- Change any part with vim.lsp.config('dmem', {...}), e.g.
--   vim.lsp.config('dmem', { cmd = { 'dmem-lsp', '--device', 'cpu' },
--                            settings = { dmem = { completion = { maxTokens = 32 } } } })
-- Plugin options (ghost text, forwarding of diagnostics) come from vim.g.dmem.
local dmem = require('dmem')

local config = dmem.lsp_config()
config.name = nil -- the file's name is the config's name
config.root_markers = nil
config.root_dir = function(bufnr, on_dir)
  local path = vim.api.nvim_buf_get_name(bufnr)
  if path ~= '' then
    on_dir(dmem.root(path))
  end
end
-- settings may have been changed by vim.lsp.config: send what is in force at start
config.before_init = function(params, client_config)
  params.initializationOptions = client_config.settings
end
return config
